"""Calls every operation of the funkrec API through the Python client that
openapi-python-client generated from the live server's /openapi.json, and checks that
each answer parses into the typed model the document promises.

Run by scripts/client-python.sh:  python3 client_python_check.py BASE_URL ADMIN_KEY DOC
Fails (exit 1) on a wrong status, a wrong type, or an operation of the document that
this script does not call.
"""

import json
import sys
import time

from funkrec_client import AuthenticatedClient, Client
from funkrec_client.api.dashboard import (
    dashboard,
    dashboard_script,
    dashboard_session,
    dashboard_style,
    ingestion,
    ingestion_svg,
)
from funkrec_client.api.health import healthz, metrics, readyz
from funkrec_client.api.meta import openapi
from funkrec_client.api.model import (
    get_model,
    learning_curve_svg,
    model_history,
    model_history_svg,
    model_versions,
    rollback,
    train,
)
from funkrec_client.api.ratings import delete_rating, forget_user, list_ratings, post_ratings, retire_item
from funkrec_client.api.serving import prediction, recommendations, similar
from funkrec_client.models import (
    Accepted,
    EpochStats,
    ErrorBody,
    Health,
    Hyper,
    Ingestion,
    ModelHistory,
    ModelInfo,
    ModelState,
    ModelVersions,
    PredictionOut,
    RatingBatch,
    RatingInput,
    RatingsPage,
    Ready,
    Recommendations,
    RollbackDone,
    RollbackRequest,
    ScoredItem,
    Session,
    SimilarItems,
    TrainAccepted,
    TrainerKind,
    VersionState,
)

BASE, KEY, DOC = sys.argv[1], sys.argv[2], sys.argv[3]
called = set()


def check(op, response, status, model):
    """`response` (a generated `Response`) has `status` and parses as `model`."""
    called.add(op)
    if response.status_code != status:
        sys.exit(f"{op}: status {response.status_code}, expected {status}: {response.content!r}")
    if model is not None and not isinstance(response.parsed, model):
        sys.exit(f"{op}: parsed {type(response.parsed).__name__}, expected {model.__name__}")
    print(f"ok {op}: {status} {type(response.parsed).__name__}")
    return response.parsed


open_client = Client(base_url=BASE, raise_on_unexpected_status=True)
client = AuthenticatedClient(base_url=BASE, token=KEY, raise_on_unexpected_status=True)

assert check("healthz", healthz.sync_detailed(client=open_client), 200, Health).status == "ok"
check("readyz", readyz.sync_detailed(client=open_client), 200, Ready)
check("openapi", openapi.sync_detailed(client=open_client), 200, None)

# a wrong key is refused with the typed error body
bad = AuthenticatedClient(base_url=BASE, token="not-a-key", raise_on_unexpected_status=True)
err = get_model.sync_detailed(client=bad).parsed
if not isinstance(err, ErrorBody) or err.error.code.value != "unauthorized":
    sys.exit(f"a wrong key: expected ErrorBody unauthorized, got {err!r}")

# a planted low-rank problem: 40 users x 30 items, each user rates 20 items
ratings = []
for u in range(40):
    for i in range(30):
        if (u + 2 * i) % 3 != 0:
            score = 1 + 4 * (((u % 4) == (i % 4)) * 0.75 + ((u + i) % 5) * 0.05)
            ratings.append(RatingInput(user=f"u{u}", item=f"i{i}", rating=round(score, 1)))
accepted = check(
    "post_ratings",
    post_ratings.sync_detailed(client=client, body=RatingBatch(ratings=ratings)),
    201,
    Accepted,
)
assert accepted.accepted == len(ratings), accepted
one = post_ratings.sync_detailed(client=client, body=RatingInput(user="u0", item="extra", rating=3))
assert isinstance(one.parsed, Accepted) and one.parsed.accepted == 1, one

page = check("list_ratings", list_ratings.sync_detailed("u0", client=client, limit=5), 200, RatingsPage)
assert page.user == "u0" and len(page.ratings) == 5 and page.total >= 5, page

check("delete_rating", delete_rating.sync_detailed("u0", "extra", client=client), 204, None)
gone = delete_rating.sync_detailed("u0", "extra", client=client).parsed
assert isinstance(gone, ErrorBody) and gone.error.code.value == "rating_not_found", gone

job = check("train", train.sync_detailed(client=client), 202, TrainAccepted)
assert job.job.queued or job.job.running or job.job.runs >= 1, job

deadline = time.monotonic() + 120
while True:
    info = get_model.sync(client=client)
    if isinstance(info, ModelInfo) and info.state == ModelState.READY and not info.training.running:
        break
    if time.monotonic() > deadline:
        sys.exit(f"no model after 120 s: {info!r}")
    time.sleep(0.2)
info = check("get_model", get_model.sync_detailed(client=client), 200, ModelInfo)
assert isinstance(info.hyperparameters, Hyper), info.hyperparameters
assert isinstance(info.hyperparameters.trainer, TrainerKind)
assert info.hyperparameters.scale.min_ < info.hyperparameters.scale.max_
assert info.epochs and all(isinstance(e, EpochStats) for e in info.epochs)
# early stopping (model.patience) may end the run before hyperparameters.epochs
assert len(info.epochs) <= info.hyperparameters.epochs, (len(info.epochs), info.hyperparameters.epochs)
assert info.stopped_early or len(info.epochs) == info.hyperparameters.epochs, info
assert info.counts.ratings == len(ratings), info.counts

p = check("prediction", prediction.sync_detailed("u1", "i5", client=client), 200, PredictionOut)
assert p.known_user and p.known_item and not p.fallback and 1 <= p.rating <= 5, p

recs = check("recommendations", recommendations.sync_detailed("u1", client=client, n=5), 200, Recommendations)
rated = {r.item.lower() for r in list_ratings.sync(user="u1", client=client, limit=100).ratings}
assert not recs.fallback and len(recs.items) == 5, recs
assert all(isinstance(s, ScoredItem) and s.item not in rated for s in recs.items), recs

sim = check("similar", similar.sync_detailed("i1", client=client, n=3), 200, SimilarItems)
assert not sim.fallback and len(sim.items) == 3 and all(s.item != "i1" for s in sim.items), sim

page = check("dashboard", dashboard.sync_detailed(client=open_client), 200, str)
assert '<script src="/dashboard/app.js"' in page, page[:300]
assert "fetch(" in check("dashboard_script", dashboard_script.sync_detailed(client=open_client), 200, str)
assert "{" in check("dashboard_style", dashboard_style.sync_detailed(client=open_client), 200, str)
who = check("dashboard_session", dashboard_session.sync_detailed(client=client), 200, Session)
assert who.keys_required and who.role == "admin", who
assert dashboard_session.sync(client=bad).role is None
curve = check("learning_curve_svg", learning_curve_svg.sync_detailed(client=client), 200, str)
assert curve.count("<circle") == len(info.epochs) + sum(e.validation_rmse is not None for e in info.epochs), curve[:200]
hist = check("model_history", model_history.sync_detailed(client=client), 200, ModelHistory)
assert [v.version for v in hist.versions] == [info.version], hist
assert hist.versions[-1].holdout_rmse == info.holdout_rmse, hist
plot = check("model_history_svg", model_history_svg.sync_detailed(client=client), 200, str)
assert plot.startswith("<svg"), plot[:100]
vers = check("model_versions", model_versions.sync_detailed(client=client), 200, ModelVersions)
assert [(v.version, v.state) for v in vers.versions] == [(info.version, VersionState.SERVING)], vers
assert vers.versions[0].file_kept and vers.versions[0].counts.ratings == len(ratings), vers
back = check("rollback", rollback.sync_detailed(client=client, body=RollbackRequest(version=info.version)), 200, RollbackDone)
assert back.version == info.version and back.trained_at == info.trained_at, back
missing_version = rollback.sync(client=client, body=RollbackRequest(version=info.version + 100))
assert isinstance(missing_version, ErrorBody) and missing_version.error.code.value == "version_not_found", missing_version

# forget on request: a user's ratings, then an item (admin)
check("forget_user", forget_user.sync_detailed("u39", client=client), 204, None)
assert list_ratings.sync(user="u39", client=client).total == 0
after = recommendations.sync(user="u39", client=client, n=5)
assert isinstance(after, Recommendations) and after.fallback, after
nobody = forget_user.sync_detailed("never-rated", client=client).parsed
assert isinstance(nobody, ErrorBody) and nobody.error.code.value == "user_not_found", nobody
check("retire_item", retire_item.sync_detailed("i29", client=client), 204, None)
refused = post_ratings.sync_detailed(client=client, body=RatingInput(user="u0", item="i29", rating=3)).parsed
assert isinstance(refused, ErrorBody) and refused.error.code.value == "item_retired", refused
sim = similar.sync(item="i1", client=client, n=29)
assert all(s.item != "i29" for s in sim.items), sim

stats = check("ingestion", ingestion.sync_detailed(client=client), 200, Ingestion)
assert len(stats.written_per_minute) == 60 and sum(stats.written_per_minute) >= len(ratings), stats
assert stats.model_version == info.version and sum(b.count for b in stats.distribution) == len(ratings), stats
bars = check("ingestion_svg", ingestion_svg.sync_detailed(client=client), 200, str)
assert bars.count("<circle") == 60 and bars.count('opacity="0.8"') == len(stats.distribution), bars[:200]

text = check("metrics", metrics.sync_detailed(client=open_client), 200, str)
assert "funkrec" in text, text[:200]

ops = {
    op["operationId"]
    for item in json.load(open(DOC))["paths"].values()
    for op in item.values()
    if isinstance(op, dict) and "operationId" in op
}
missing = ops - called
if missing:
    sys.exit(f"operations of the document this check does not call: {sorted(missing)}")
print(f"generated client: all {len(ops)} operations answered with their typed models")
