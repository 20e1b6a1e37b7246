"""Train: what the feedback holds, the settings, start / cancel, live loss, versions."""

import pandas as pd
import streamlit as st

from core.encoder.registry import get_encoder_spec, list_encoders
from core.learn.finetune import feedback_pairs
from core.learn.jobs import reap_stale, start_training
from core.learn.pairs import PairSettings, TrainingPairs
from core.learn.training import TrainSettings
from core.measure import base_job
from core.store import StoreError, TrainingRun
from core.studio import Studio
from ui.charts import loss_curves, pairs_balance
from ui.jobs import ensure_base, follow_job
from ui.resources import get_studio
from ui.state import require_app_frame
from ui.text import MODE_HELP

require_app_frame(__file__)
studio = get_studio()
st.title("Fine-tune on feedback")
reap_stale(studio.store)


@st.cache_data(show_spinner="Reading the feedback…", max_entries=4)
def training_pairs(_studio: Studio, data_dir: str, version: str, signature: str) -> TrainingPairs:
    """The pairs a run would use; recomputed only when the gallery or the log changes."""
    return feedback_pairs(_studio, PairSettings())


pairs = training_pairs(
    studio,
    str(studio.settings.data_dir),
    studio.active_version().version,
    studio.state_signature(),
)
summary = pairs.summary
st.subheader("What the feedback holds")
a, b, c, d = st.columns(4)
a.metric("Training pairs", f"{len(pairs):,}", help=f"{summary['pairs_before']} before re-balancing")
b.metric("Positives", sum(summary["positives"].values()), help=str(summary["positives"]))
c.metric(
    "Explicit negatives",
    sum(summary["explicit_negatives"].values()),
    help=str(summary["explicit_negatives"]),
)
d.metric("Negatives per pair", summary["negatives_per_pair"], help=str(summary["negatives"]))
if len(pairs):
    st.plotly_chart(pairs_balance(summary), width="stretch")
else:
    st.info(
        "No usable feedback yet: label results on the Search page, or `python -m core simulate`."
    )

st.subheader("Run")
mode = st.radio(
    "Mode", list(MODE_HELP), horizontal=True, format_func=lambda m: f"{m} · {MODE_HELP[m]}"
)
defaults = TrainSettings.for_mode(mode)
with st.form("settings"):
    middle, right = st.columns(2)
    epochs = middle.slider(
        "Epochs (upper bound; early stopping)", 1, 200, defaults.epochs, key=f"epochs-{mode}"
    )
    temperature = right.select_slider("Temperature", [0.05, 0.07, 0.1, 0.2, 0.5], value=0.2)
    start = st.form_submit_button("Start training", type="primary", disabled=len(pairs) < 2)
if start:
    try:
        run = start_training(
            studio.settings, TrainSettings.for_mode(mode, epochs=epochs, temperature=temperature)
        )
        st.toast(f"Training run {run.id} started")
    except StoreError as exc:
        st.error(str(exc))


def show_run(run: TrainingRun) -> None:
    if run.live:
        st.progress(run.fraction, text=run.describe())
        if st.button("Cancel", key=f"cancel-{run.id}"):
            studio.cancel_training(run.id)
    else:
        status = {"done": st.success, "failed": st.error, "cancelled": st.warning}[run.status]
        status(f"Run {run.id} · {run.status} · {run.message or ''}")
    if run.losses:
        st.plotly_chart(loss_curves(run.losses), width="stretch")


@st.fragment(run_every=1.0)
def live_run() -> None:
    """Polls the store every second; only this part of the page reruns."""
    runs = studio.training_runs(limit=1)
    if runs:
        show_run(runs[0])
    else:
        st.caption("No training run yet.")


live_run()

st.subheader("Versions")
versions = studio.versions()
table = pd.DataFrame([v.summary() for v in versions])
table = table.assign(
    mode=table["mode"].fillna("—"),
    **{
        "test mAP before": [m.get("map") for m in table.metrics_before],
        "test mAP after": [m.get("map") for m in table.metrics],
    },
    **{
        f"{name} mAP {when}": [
            sets.get(name, {}).get(when, {}).get("map") for sets in table.label_sets
        ]
        for name in ("seen", "unseen")
        for when in ("before", "after")
    },
).rename(columns={"created_at": "created", "seen_labels": "seen categories"})
columns = [
    "version",
    "active",
    "parent",
    "encoder",
    "mode",
    "test mAP before",
    "test mAP after",
    "seen mAP before",
    "seen mAP after",
    "unseen mAP before",
    "unseen mAP after",
    "seen categories",
    "pairs",
]
st.dataframe(table[[*columns, "created"]], hide_index=True, width="stretch")
pick, button = st.columns([3, 1], vertical_alignment="bottom")
chosen = pick.selectbox(
    "Version", [v.version for v in versions], index=[v.active for v in versions].index(True)
)
st.caption(
    "Before and after: test metrics recorded when the version was trained, its parent's and its "
    "own, over every query, the categories its feedback covered (seen) and the rest (unseen)."
)
forgets = next(v for v in versions if v.version == chosen).forgetting()
confirmed = True
if forgets:
    st.warning(f"{forgets}.")
    confirmed = st.checkbox("Activate it anyway", key=f"force-{chosen}")
if button.button("Activate", disabled=chosen == studio.active_version().version or not confirmed):
    studio.activate(chosen, force=bool(forgets))
    st.toast(f"{chosen} is active: search uses it now (roll back by activating its parent).")
    st.rerun()

st.subheader("New base")
st.caption(
    "Another encoder (or the same one afresh) as a version of its own: no parent, the whole "
    "gallery indexed with it in the background and evaluated. It is not activated; compare it "
    "on the Metrics page, activate it above, and fine-tune from it like any version."
)
offline = [name for name in list_encoders() if get_encoder_spec(name).packaged_trunk]
encoder_column, create_column = st.columns([3, 1], vertical_alignment="bottom")
encoder = encoder_column.selectbox(
    "Encoder",
    offline,
    index=offline.index(studio.active_version().encoder)
    if studio.active_version().encoder in offline
    else 0,
    format_func=lambda name: f"{name} — {get_encoder_spec(name).description}",
)
if create_column.button("Create", key="new-base"):
    ensure_base(studio, encoder)
last = base_job.read_base_status(studio.settings)
if last is not None and last.state == "done":
    st.caption(f"Last new base: {last.message}")
elif last is not None:  # running, or failed (with its reason and a retry)
    follow_job("New base", lambda retry: ensure_base(studio, None, retry=retry))
