//! `funkrec train --plot` and `funkrec eval --plot`: the real binary writes SVG learning
//! curves with one marker per epoch and line, and stays quiet when stderr is not a terminal.

use std::process::Command;

fn funkrec(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_funkrec"))
        .args(args)
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn train_and_eval_draw_one_line_per_fold_and_series() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    funkrec(&[
        "synth",
        "--users",
        "200",
        "--items",
        "100",
        "--ratings",
        "5000",
        "--out",
        &p("r.tsv"),
        "-q",
    ]);

    let out = funkrec(&[
        "eval",
        "--data",
        &p("r.tsv"),
        "--folds",
        "3",
        "--factors",
        "4",
        "--epochs",
        "7",
        "--plot",
        &p("curves.svg"),
        "--json",
    ]);
    // stderr is a pipe here: no progress bar output, and --json leaves stdout one object
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["folds"].as_array().unwrap().len(), 3);
    let svg = std::fs::read_to_string(p("curves.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 3 * 2 * 7);
    for fold in 1..=3 {
        for series in ["train", "validation"] {
            assert!(
                svg.contains(&format!("fold {fold} {series}")),
                "fold {fold} {series}"
            );
        }
    }

    funkrec(&[
        "train",
        "--data",
        &p("r.tsv"),
        "--out",
        &p("m.fkm"),
        "--factors",
        "4",
        "--epochs",
        "9",
        "--plot",
        &p("train.svg"),
    ]);
    let svg = std::fs::read_to_string(p("train.svg")).unwrap();
    // train and validation (the carved split): one marker per epoch each
    assert_eq!(svg.matches("<circle").count(), 2 * 9);
    assert!(svg.contains("epoch") && svg.contains("RMSE"));
}
