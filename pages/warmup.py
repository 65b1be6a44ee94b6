"""Warm-up: train on the noisy labels for a few epochs (in the background), live curves."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages import _figures as F
from pages import _store as S
from pages import _ui as ui
from prune_core import artifacts as A
from prune_core import jobs as J

ui.ensure_app_frame(__file__)

st.title("Warm-up")
st.caption("A short cross-entropy training on the noisy labels, stopped before the net memorises them; "
           "its softmax confidences and penultimate embeddings feed the graph and every selection method.")

run_id = ui.need_run()
d = ui.need_data(run_id)
if A.is_model_outputs(S.warmup(run_id)):
    st.info("This run holds model outputs you supplied (probabilities and embeddings stand in for a warm-up): "
            "there is nothing to train here; use Select, Explore and Label errors.")
    st.stop()

from prune_core.models import MODEL_NAMES, TORCHVISION_PREFIX, resolve_model_name  # noqa: E402
from prune_core.training import default_hyperparameters, resolve_device  # noqa: E402

ds = d.ds
c1, c2, c3, c4, c5 = st.columns(5)


def reset_defaults():
    # A new model brings its own defaults for epochs, learning rate and batch size.
    for k in ("warmup_epochs", "warmup_lr", "warmup_batch"):
        st.session_state.pop(k, None)


PRETRAINED = "pretrained backbone (torchvision)"
model = c1.selectbox("Model", ["auto", *MODEL_NAMES, PRETRAINED], key="warmup_model", on_change=reset_defaults)
if model == PRETRAINED:
    # Purer neighbourhoods than any from-scratch net on small data (docs/benchmarks.md): a frozen
    # torchvision backbone whose new linear head the warm-up trains.
    spec = st.text_input(
        "Backbone: torchvision:ARCH[:WEIGHTS]", value="torchvision:resnet18", key="warmup_backbone",
        on_change=reset_defaults,
        help="ARCH: any torchvision classification model (resnet18, resnet50, convnext_tiny, ...). WEIGHTS: "
             "DEFAULT (torchvision's pretrained weights, downloaded once into torch's hub cache), a weights "
             "name such as IMAGENET1K_V1, a local state_dict file (/path/to/resnet50-11ad3fa6.pth) for machines "
             "without internet, or none (random, frozen: for testing only).").strip()
    model = spec if spec.startswith(TORCHVISION_PREFIX) else TORCHVISION_PREFIX + spec
try:
    try:  # "auto" depends on the device (the paper's network on CUDA); the choice sits below
        device_type = resolve_device(st.session_state.get("warmup_device", "auto")).type
    except Exception:  # noqa: BLE001 - an unavailable device is reported at its own widget
        device_type = "cpu"
    resolved = resolve_model_name(model, ds.kind, ds.x_train.shape[1:], num_examples=ds.n_train,
                                  device_type=device_type)
except Exception as e:  # noqa: BLE001 - e.g. a CNN asked for feature vectors
    st.error(str(e))
    st.stop()
if model == "auto":
    c1.caption(f"auto picks **{resolved}**")
e0, lr0, b0 = default_hyperparameters(resolved, ds.kind)
for k, v in (("warmup_epochs", e0), ("warmup_lr", lr0), ("warmup_batch", b0)):
    if k not in st.session_state:
        st.session_state[k] = v
epochs = c2.number_input("Epochs", min_value=1, max_value=500, step=1, key="warmup_epochs")
lr = c3.number_input("Learning rate", min_value=1e-5, max_value=5.0, step=0.01, format="%.4f", key="warmup_lr")
batch = c4.number_input("Batch size", min_value=2, max_value=4096, step=16, key="warmup_batch")
device = c5.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="warmup_device")
try:
    picked = resolve_device(device)
    c5.caption(f"{device} → **{picked}**")
    device_ok = True
except Exception as e:  # noqa: BLE001
    c5.caption(str(e))
    device_ok = False
seed = st.number_input("Seed", min_value=0, value=0, step=1, key="warmup_seed")

wu = S.warmup(run_id)
if wu is not None:
    st.caption("A new warm-up replaces this run's warm-up, and with it its graphs, selections and maps "
               "(kept until the new warm-up has finished).")
params = {"epochs": int(epochs), "model": model, "lr": float(lr), "batch_size": int(batch), "device": device,
          "seed": int(seed)}
if st.button("Start warm-up", key="warmup_start", type="primary", disabled=not device_ok):
    ui.submit(run_id, "warmup", J.task_warmup, params)
    st.rerun()


def curves(history: list[dict], key: str, epochs: int | None = None):
    """Loss and accuracy per epoch; the epoch axis spans all `epochs` (a live run's first
    point sits at the left of the whole run), accuracy stays within [0, 1]."""
    if not history:
        return
    h = pd.DataFrame(history)
    last = max(int(epochs or 0), int(h["epoch"].max()))
    epoch_axis = dict(range=[0.5, last + 0.5], dtick=1 if last <= 20 else None, title_text="epoch")
    c1, c2 = st.columns(2)
    fig = go.Figure(go.Scatter(x=h["epoch"], y=h["train_loss"], mode="lines+markers", name="train loss"))
    fig.update_layout(height=280, margin=dict(l=10, r=10, b=10), title="loss (noisy labels)",
                      yaxis_rangemode="tozero")
    fig.update_xaxes(**epoch_axis)
    F.show_figure(fig, f"{key}_loss", target=c1)
    fig = go.Figure(go.Scatter(x=h["epoch"], y=h["train_acc"], mode="lines+markers", name="train acc (noisy)"))
    if "test_acc" in h and h["test_acc"].notna().any():
        fig.add_trace(go.Scatter(x=h["epoch"], y=h["test_acc"], mode="lines+markers", name="test acc"))
    fig.update_layout(height=280, margin=dict(l=10, r=10, b=10), title="accuracy", yaxis_range=[0, 1.02])
    fig.update_xaxes(**epoch_axis)
    F.show_figure(fig, f"{key}_acc", target=c2, legend="below")


def live(job):
    if job["kind"] in ("warmup", "demo"):
        params = job.get("params") or {}
        curves(job.get("metrics") or [], key=f"live_{job['id']}", epochs=params.get("epochs"))


active = ui.show_jobs(run_id, kinds=("warmup", "demo"), key="warmup_jobs", extra=live)

if wu is not None and not active:
    info = wu.info
    st.subheader("Last warm-up")
    cols = st.columns(5)
    cols[0].metric("Model", info["model_name"])
    cols[1].metric("Device", info["device"])
    cols[2].metric("Epochs", info["epochs"])
    cols[3].metric("Test accuracy", "n/a" if info.get("test_acc") is None else f"{info['test_acc']:.3f}")
    cols[4].metric("Time", f"{info['seconds']:.1f} s")
    curves(info.get("history") or [], key="warmup_done")
    if d.is_noisy is not None:
        conf = wu.probs.max(axis=1)
        st.caption(f"Mean confidence: clean labels {conf[~d.is_noisy].mean():.3f}, wrong labels "
                   f"{conf[d.is_noisy].mean():.3f} · prediction = clean label on "
                   f"{(wu.probs.argmax(1) == d.y_clean).mean():.1%} of the training set")
