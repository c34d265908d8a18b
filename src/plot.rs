//! Line and bar charts as SVG text (plotters' SVG backend), shared by the dashboard's
//! plot endpoints and the `--plot` option of `train` and `eval`.

use plotters::prelude::*;

/// One named line: `(x, y)` points in x order, each drawn as a marker on the line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// How the points are drawn.
    pub marker: Marker,
}

/// The look of a series' points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A line through filled circles (one `<circle>` per point).
    Circle,
    /// Red crosses and no line (e.g. model versions the publish gate rejected).
    Cross,
}

/// A chart: title, axis names and its lines.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
}

/// Width and height of every chart, in SVG user units.
pub const SIZE: (u32, u32) = (720, 360);

/// One chart as an SVG document. Each point of each series is one `<circle>`, so a
/// reader (or a test) can count them; an empty chart says "no data".
pub fn svg(chart: &Chart) -> String {
    svg_stack(std::slice::from_ref(chart))
}

/// Charts stacked vertically in one SVG document, each `SIZE` large.
pub fn svg_stack(charts: &[Chart]) -> String {
    let mut out = String::new();
    let height = SIZE.1 * charts.len().max(1) as u32;
    {
        let root = SVGBackend::with_string(&mut out, (SIZE.0, height)).into_drawing_area();
        let panels = root.split_evenly((charts.len().max(1), 1));
        let drawn = root.fill(&WHITE).map_err(|e| e.to_string()).and_then(|_| {
            charts
                .iter()
                .zip(&panels)
                .try_for_each(|(c, area)| draw(c, area).map_err(|e| e.to_string()))
        });
        if let Err(e) = drawn.and_then(|_| root.present().map_err(|e| e.to_string())) {
            // The SVG backend writes to a String: nothing here can fail but a bug.
            tracing::warn!(error = %e, "plot failed");
        }
    }
    out
}

fn draw<DB: DrawingBackend>(
    c: &Chart,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || c.series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points().filter(|(x, y)| x.is_finite() && y.is_finite()) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let empty = x0 > x1;
    if empty {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    // a little room around the data; a flat line still gets a visible range
    let pad = |lo: f64, hi: f64| {
        let d = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
        (lo - d, hi + d)
    };
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = pad(y0, y1);
    let title = if empty {
        format!("{} (no data)", c.title)
    } else {
        c.title.to_owned()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(c.x_label)
        .y_desc(c.y_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, s) in c.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if s.marker == Marker::Cross {
            let red = RED.to_rgba();
            chart
                .draw_series(pts.iter().map(|&p| Cross::new(p, 5, red.stroke_width(2))))?
                .label(s.name.as_str())
                .legend(move |(x, y)| Cross::new((x + 10, y), 5, red.stroke_width(2)));
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    if !c.series.is_empty() && !empty {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// A bar chart: one bar per `(x, count)`, each `width` wide and centred on x.
pub struct Bars<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub bars: &'a [(f64, f64)],
    pub width: f64,
}

/// A line chart above a bar chart, in one SVG document, each `SIZE` large. Every bar
/// is one `<rect>` with an `opacity` attribute (the only ones that have one), so a
/// reader can count them.
pub fn svg_line_and_bars(line: &Chart, bars: &Bars) -> String {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (SIZE.0, SIZE.1 * 2)).into_drawing_area();
        let (top, bottom) = root.split_vertically(SIZE.1);
        let drawn = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(line, &top).map_err(|e| e.to_string()))
            .and_then(|_| draw_bars(bars, &bottom).map_err(|e| e.to_string()))
            .and_then(|_| root.present().map_err(|e| e.to_string()));
        if let Err(e) = drawn {
            tracing::warn!(error = %e, "plot failed");
        }
    }
    out
}

fn draw_bars<DB: DrawingBackend>(
    c: &Bars,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let half = c.width / 2.0;
    let bars: Vec<(f64, f64)> = c
        .bars
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let empty = bars.is_empty();
    let (x0, x1) = match (bars.first(), bars.last()) {
        (Some(a), Some(b)) => (a.0 - c.width, b.0 + c.width),
        _ => (0.0, 1.0),
    };
    let y1 = bars.iter().map(|b| b.1).fold(1.0f64, f64::max) * 1.05;
    let title = if empty {
        format!("{} (no data)", c.title)
    } else {
        c.title.to_owned()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0.0..y1)?;
    chart
        .configure_mesh()
        .x_desc(c.x_label)
        .y_desc(c.y_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let color = Palette99::pick(0).mix(0.8);
    chart.draw_series(bars.iter().map(|&(x, y)| {
        Rectangle::new([(x - half * 0.9, 0.0), (x + half * 0.9, y)], color.filled())
    }))?;
    Ok(())
}

/// Train and (when present) validation RMSE per epoch of one run, as series named
/// `"{prefix}train"` and `"{prefix}validation"`.
pub fn rmse_series(prefix: &str, epochs: &[funkrec_engine::EpochStats]) -> Vec<Series> {
    let train = epochs
        .iter()
        .map(|e| (e.epoch as f64, e.train_rmse))
        .collect();
    let validation: Vec<(f64, f64)> = epochs
        .iter()
        .filter_map(|e| Some((e.epoch as f64, e.validation_rmse?)))
        .collect();
    let mut out = vec![Series {
        name: format!("{prefix}train"),
        points: train,
        marker: Marker::Circle,
    }];
    if !validation.is_empty() {
        out.push(Series {
            name: format!("{prefix}validation"),
            points: validation,
            marker: Marker::Circle,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_circle_per_point_and_labels() {
        let series = [
            Series {
                name: "train".into(),
                points: (1..=7).map(|e| (e as f64, 1.0 / e as f64)).collect(),
                marker: Marker::Circle,
            },
            Series {
                name: "validation".into(),
                points: (1..=7).map(|e| (e as f64, 1.2 / e as f64)).collect(),
                marker: Marker::Circle,
            },
            Series {
                name: "rejected".into(),
                points: vec![(3.0, 2.0), (5.0, 2.5)],
                marker: Marker::Cross,
            },
        ];
        let out = svg(&Chart {
            title: "Learning curve",
            x_label: "epoch",
            y_label: "RMSE",
            series: &series,
        });
        assert!(out.starts_with("<svg"), "{}", &out[..80]);
        assert_eq!(out.matches("<circle").count(), 14, "crosses are no circles");
        for text in ["Learning curve", "epoch", "RMSE", "validation", "rejected"] {
            assert!(out.contains(text), "{text} missing");
        }
        assert!(
            !out.contains("style="),
            "inline styles break the dashboard's CSP"
        );
    }

    #[test]
    fn line_and_bars_one_rect_per_bar() {
        let line = [Series {
            name: "ratings".into(),
            points: (0..60).map(|m| (m as f64, (m % 7) as f64)).collect(),
            marker: Marker::Circle,
        }];
        let out = svg_line_and_bars(
            &Chart {
                title: "Ratings written per minute",
                x_label: "minute",
                y_label: "ratings",
                series: &line,
            },
            &Bars {
                title: "Rating distribution",
                x_label: "rating",
                y_label: "ratings",
                bars: &[
                    (1.0, 10.0),
                    (2.0, 5.0),
                    (3.0, 0.0),
                    (4.0, 40.0),
                    (5.0, 20.0),
                ],
                width: 1.0,
            },
        );
        assert_eq!(out.matches("<circle").count(), 60);
        assert_eq!(out.matches("opacity=\"0.8\"").count(), 5, "{out}");
        for text in [
            "Ratings written per minute",
            "Rating distribution",
            "rating",
        ] {
            assert!(out.contains(text), "{text} missing");
        }
        assert!(
            !out.contains("style="),
            "inline styles break the dashboard's CSP"
        );
    }

    #[test]
    fn empty_chart_says_so() {
        let out = svg(&Chart {
            title: "History",
            x_label: "version",
            y_label: "RMSE",
            series: &[],
        });
        assert!(out.contains("History (no data)"));
        assert_eq!(out.matches("<circle").count(), 0);
    }
}
