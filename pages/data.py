"""Data: load a dataset, inject label noise, look at the images, classes and noise."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages import _figures as F
from pages import _store as S
from pages import _ui as ui
from prune_core import artifacts as A
from prune_core import jobs as J
from prune_core.errors import InputError
from prune_core.noise import NoisyLabels, describe_noise

ui.ensure_app_frame(__file__)

st.title("Data")

s = S.store()
run_id = ui.current_run_id()
has_data = run_id is not None and S.data(run_id) is not None

SOURCES = {
    "digits": "digits (built-in, 1,437 train / 360 test 8x8 images)",
    "upload": "npz file (upload)",
    "npz": "npz file (path on the server)",
    "torchvision": "torchvision dataset (folder)",
    "imagefolder": "image folder (one sub-folder per class)",
    "csv": "CSV of image paths and labels",
}
# Stored upload path -> the file name the user chose (this session): messages name the user's file.
UPLOAD_NAMES: dict[str, str] = st.session_state.setdefault("_upload_names", {})
NOISE_KINDS = {"none": "none (labels as given)", "sym": "symmetric", "asym": "asymmetric (class flips)",
               "labels": "noisy-label file"}


# Uploads this attempt wrote to the workspace: removed again when the attempt fails, so rejected
# files do not pile up under uploads/ (a file an earlier run uses was not written now, so it stays).
NEW_UPLOADS: list = []


def store_upload(up) -> Path:
    """Keep an uploaded file under the workspace (named by its content hash) and return its path."""
    raw = up.getvalue()
    path = s.root / "uploads" / (hashlib.sha256(raw).hexdigest()[:16] + ".npz")
    if not path.exists():
        from prune_core.runstore import atomic_write_bytes

        atomic_write_bytes(path, raw)
        NEW_UPLOADS.append(path)
    UPLOAD_NAMES[str(path)] = up.name
    return path


def discard_new_uploads() -> None:
    while NEW_UPLOADS:
        NEW_UPLOADS.pop().unlink(missing_ok=True)


def spec_from_inputs() -> tuple[str, bool]:
    """(data SPEC, download) from the form's widgets; InputError for missing fields."""
    src = st.session_state.get("data_source", "digits")
    if src == "digits":
        return "digits", False
    if src == "upload":
        up = st.session_state.get("data_upload")
        if up is None:
            raise InputError("choose an .npz file to upload first")
        if not up.name.lower().endswith(".npz"):
            raise InputError(f"{up.name} is not an .npz file: upload a NumPy .npz archive with x_train and y_train")
        return f"npz:{store_upload(up)}", False
    if src == "npz":
        p = (st.session_state.get("data_npz_path") or "").strip()
        if not p:
            raise InputError("enter the path of an .npz file")
        return f"npz:{p}", False
    if src == "torchvision":
        root = (st.session_state.get("data_tv_root") or "").strip()
        if not root:
            raise InputError("enter the torchvision root folder")
        return f"torchvision:{st.session_state.get('data_tv_name', 'mnist')}:{root}", bool(
            st.session_state.get("data_tv_download", False))
    if src == "csv":
        p = (st.session_state.get("data_csv_path") or "").strip()
        if not p:
            raise InputError("enter the path of the CSV (optionally #image=COL,label=COL,split=COL,clean=COL)")
        return f"csv:{p}", False
    p = (st.session_state.get("data_folder_path") or "").strip()
    if not p:
        raise InputError("enter the path of the image folder")
    return f"imagefolder:{p}", False


def users_words(message: str, upload=None) -> str:
    """A message about the data in the user's words: internal upload paths (and the bare stored
    file names) replaced by the names of the files the user chose, and an upload's message led
    by that file's name. upload: the uploaded file the attempt used (default: the dataset
    form's, when its source is an upload)."""
    for path, name in UPLOAD_NAMES.items():
        stored = path.rsplit("/", 1)[-1]
        message = message.replace(f"npz:{path}", name).replace(path, name).replace(stored, name)
    up = upload
    if up is None and st.session_state.get("data_source") == "upload":
        up = st.session_state.get("data_upload")
    if up is not None and up.name not in message:
        message = f"{up.name}: {message}"
    return message


def noise_from_inputs() -> str:
    kind = st.session_state.get("data_noise_type", "sym")
    if kind == "none":
        return "none"
    if kind == "labels":
        p = (st.session_state.get("data_noise_file") or "").strip()
        if not p:
            raise InputError("enter the path of the noisy-label file (.npy, .csv, .npz#KEY or .pt#KEY)")
        return f"labels:{p}"
    rate = float(st.session_state.get("data_noise_rate", 40)) / 100.0
    return f"{kind}:{rate:g}"


with st.expander("New run from a dataset", expanded=not has_data):
    src = st.radio("Source", list(SOURCES), key="data_source", format_func=SOURCES.get, horizontal=True)
    if src == "upload":
        # Any file is accepted here and checked on loading: a wrong type gets a message, not only an icon.
        up = st.file_uploader("npz file with x_train, y_train (optional y_train_clean, x_test, y_test, class_names)",
                              key="data_upload")
        if up is not None and not up.name.lower().endswith(".npz") and not st.session_state.get("data_load"):
            st.error(f"{up.name} is not an .npz file: upload a NumPy .npz archive with x_train and y_train.")
    elif src == "npz":
        st.text_input("Path of the .npz file", key="data_npz_path", placeholder="/data/my_set.npz")
    elif src == "torchvision":
        c1, c2, c3 = st.columns([1, 2, 1])
        c1.selectbox("Dataset", ["mnist", "fashionmnist", "cifar10", "cifar100", "svhn"], key="data_tv_name")
        c2.text_input("Root folder", key="data_tv_root", placeholder="/data/torchvision")
        c3.checkbox("Download if missing", key="data_tv_download")
    elif src == "imagefolder":
        st.text_input("Image folder (class sub-folders, optionally under train/ and test/)", key="data_folder_path")
    elif src == "csv":
        st.text_input("CSV (or .parquet) with image paths relative to its folder and labels; optional split "
                      "(train/test) and clean-label columns", key="data_csv_path",
                      placeholder="/data/list.csv#image=file,label=class")
    c1, c2, c3 = st.columns(3)
    kind = c1.selectbox("Noise", list(NOISE_KINDS), index=1, key="data_noise_type", format_func=NOISE_KINDS.get)
    if kind in ("sym", "asym"):
        c2.slider("Noise rate (%)", 0, 95, 40, step=5, key="data_noise_rate")
    elif kind == "labels":
        c2.text_input("Label file", key="data_noise_file", placeholder="CIFAR-10_human.pt#worse_label")
    c3.number_input("Seed", min_value=0, value=0, step=1, key="data_seed")
    name = st.text_input("Run name (optional)", key="data_run_name")
    if st.button("Load data", key="data_load", type="primary"):
        try:
            spec, download = spec_from_inputs()
            noise = noise_from_inputs()
            seed = int(st.session_state.get("data_seed", 0))
            from prune_core.data import load_dataset
            from prune_core.noise import apply_noise

            with st.spinner(f"loading {spec}"):
                ds = load_dataset(spec, download=download)
                noisy = apply_noise(ds, noise, seed=seed)
            label = spec if not spec.startswith("npz:") or src != "upload" else f"upload {st.session_state['data_upload'].name}"
            new_id = s.create_run({"data": spec, "noise": noisy.spec, "seed": seed, "kind": "data"},
                                  name=name or f"{label}, {noisy.spec}")
            A.save_data(s, new_id, ds, noisy, seed)
            s.update_run(new_id, state="done", message="data loaded")
            ui.request_run(new_id)
            st.session_state["data_loaded_msg"] = (new_id, f"Loaded {ds.n_train} training examples ({ds.num_classes} classes) "
                                                            f"with noise {noisy.spec}. Next: Warm-up.")
            st.rerun()
        except InputError as e:
            discard_new_uploads()
            st.error(users_words(str(e)))
        except Exception as e:  # noqa: BLE001 - an unreadable upload, say: one line, the user's file named
            discard_new_uploads()
            st.error(users_words(f"could not load the data: {type(e).__name__}: {e}"))

with st.expander("New run from model outputs (probabilities and embeddings you already have; no warm-up)"):
    st.caption("Probabilities (N, C) in dataset and class order (cleanlab's pred_probs; out-of-sample, e.g. from "
               "cross-validation), embeddings (N, D), given labels 0..C-1, optional clean labels.")
    how = st.radio("From", ["upload", "paths"], key="outputs_from", horizontal=True,
                   format_func={"upload": "one .npz (probs, embeddings, labels, labels_clean)",
                                "paths": "files on the server"}.get)
    if how == "upload":
        st.file_uploader("npz with arrays probs, embeddings, labels (optional labels_clean)", type=["npz"],
                         key="outputs_upload")
    else:
        c1, c2 = st.columns(2)
        c1.text_input("Probabilities", key="outputs_probs", placeholder="/data/out.parquet#prob_*")
        c2.text_input("Embeddings", key="outputs_embeddings", placeholder="/data/out.npz#embeddings")
        c1.text_input("Labels", key="outputs_labels", placeholder="/data/labels.npy")
        c2.text_input("Clean labels (optional)", key="outputs_labels_clean")
    st.text_input("Images for thumbnails (optional): an image folder or a CSV of image paths, in the same order",
                  key="outputs_images", placeholder="/data/images  or  /data/list.csv")
    out_name = st.text_input("Run name (optional)", key="outputs_run_name")
    if st.button("Make the run", key="outputs_load", type="primary"):
        try:
            from prune_core.data import load_dataset
            from prune_core.outputs import read_model_outputs, read_model_outputs_npz

            if how == "upload":
                up = st.session_state.get("outputs_upload")
                if up is None:
                    raise InputError("choose an .npz file to upload first")
                if not up.name.lower().endswith(".npz"):
                    raise InputError(f"{up.name} is not an .npz file: upload a NumPy .npz archive with "
                                     "probs, embeddings and labels")
                outputs = read_model_outputs_npz(store_upload(up))
            else:
                field = {k: (st.session_state.get(f"outputs_{k}") or "").strip()
                         for k in ("probs", "embeddings", "labels", "labels_clean")}
                outputs = read_model_outputs(field["probs"], field["embeddings"], field["labels"],
                                             field["labels_clean"] or None)
            images = None
            where = (st.session_state.get("outputs_images") or "").strip()
            if where:
                source = f"csv:{where}" if where.lower().endswith((".csv", ".parquet")) or ".csv#" in where \
                    else f"imagefolder:{where}"
                images = load_dataset(source, test_fraction=0).x_train
            from prune_core.outputs import outputs_dataset

            outputs_dataset(outputs, images)  # checks (image count) before the run exists
            new_id = s.create_run({"data": "model outputs", "noise": "none", "seed": 0, "kind": "outputs"},
                                  name=out_name or f"model outputs, N={outputs.n}, C={outputs.num_classes}")
            J.save_model_outputs(s, new_id, outputs, images)
            s.update_run(new_id, state="done", message="model outputs loaded")
            ui.request_run(new_id)
            st.session_state["data_loaded_msg"] = (new_id, f"Loaded model outputs for {outputs.n} examples "
                                                            f"({outputs.num_classes} classes). Next: Select.")
            st.rerun()
        except InputError as e:
            discard_new_uploads()
            up = st.session_state.get("outputs_upload") if how == "upload" else None
            st.error(users_words(str(e), up) if up is not None else str(e))

# The note stays while its run is the current one: the page also reruns by itself (job polling).
loaded = st.session_state.get("data_loaded_msg")
if loaded and loaded[0] == run_id:
    st.success(loaded[1])

if run_id is None or not has_data:
    if run_id is not None:
        ui.show_jobs(run_id, key="data_jobs")
    st.stop()

d = S.data(run_id)
info = d.info
ds = d.ds
n = ds.n_train
c = ds.num_classes
cols = st.columns([1, 1, 0.8, 1.6, 1])  # values stay whole at 1440 px (the noise spec is the longest)
cols[0].metric("Training examples", f"{n:,}")
cols[1].metric("Test examples", f"{ds.n_test:,}")
cols[2].metric("Classes", c)
noise_spec = str(info.get("noise", "?"))
cols[3].metric("Noise", noise_spec if len(noise_spec) <= 18 else noise_spec[:17] + "…", help=noise_spec)
rate = info.get("noise_rate")
cols[4].metric("Labels wrong", "unknown" if rate is None else f"{100 * rate:.1f}%",
               help=None if rate is None else f"{info.get('n_noisy'):,} of {n:,} given labels differ from the clean ones")
source = UPLOAD_NAMES.get(str(info.get("spec", "")).removeprefix("npz:"), info.get("spec"))
try:  # the share of ALL labels that are wrong, and for asym noise the rate within its source classes
    noise_text = describe_noise(NoisyLabels(d.y_noisy, d.y_clean, d.is_noisy, None, noise_spec, rate), c,
                                ds.class_names)
except Exception:  # noqa: BLE001 - a spec this version cannot parse: the plain count below
    noise_text = None
st.caption(f"Source `{source}` · {info.get('kind')} {tuple(info.get('example_shape', []))} · noise `{noise_spec}`"
           + ("" if rate is None else f" · {info.get('n_noisy'):,} wrong labels")
           + (f" · {noise_text}" if noise_text and rate is not None else ""))

st.subheader("Examples")
c1, c2 = st.columns([1, 1])
only_noisy = c1.checkbox("Only examples with a wrong label", key="data_only_noisy", disabled=d.is_noisy is None)
count = c2.slider("How many", 8, 96, 32, step=8, key="data_grid_count")
rng = np.random.default_rng(0)
pool = np.flatnonzero(d.is_noisy) if (only_noisy and d.is_noisy is not None) else np.arange(n)
shown = np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False)) if len(pool) else []


def caption(i):
    given = F.class_name(d, int(d.y_noisy[i]))
    if d.y_clean is None:
        return f"#{i} given {given}"
    clean = F.class_name(d, int(d.y_clean[i]))
    return f"#{i} given {given}" + ("" if given == clean else f" ✗ clean {clean}")


ui.image_grid(d, shown, [caption(i) for i in shown])

c1, c2 = st.columns(2)
with c1:
    st.subheader("Classes")
    given = np.bincount(d.y_noisy, minlength=c)
    classes = np.arange(c)
    fig = go.Figure(go.Bar(x=classes, y=given, name="given (noisy)", marker_color=F.QUALITATIVE[0]))
    if d.y_clean is not None:
        fig.add_trace(go.Bar(x=classes, y=np.bincount(d.y_clean, minlength=c), name="clean",
                             marker_color=F.QUALITATIVE[1]))
    fig.update_layout(barmode="group", height=360, margin=dict(l=10, r=10, b=10),
                      xaxis_title="class", yaxis_title="examples")
    F.class_axis(fig, d)
    F.show_figure(fig, "data_hist", legend="below")
with c2:
    st.subheader("Noise transition matrix")
    if d.transition is None:
        st.caption("No ground truth: the transition matrix P(given | clean) is unknown.")
    else:
        t = np.asarray(d.transition)
        fig = go.Figure(go.Heatmap(z=t, x=np.arange(c), y=np.arange(c), colorscale="Blues", zmin=0, zmax=1,
                                   text=np.round(t, 2), texttemplate="%{text}" if c <= 15 else None,
                                   colorbar=dict(title=dict(text="P(given | clean)", side="right"), thickness=12),
                                   hovertemplate="clean %{y} → given %{x}: %{z:.3f}<extra></extra>"))
        fig.update_layout(height=360, margin=dict(l=10, r=10, b=10), xaxis_title="given label",
                          yaxis_title="clean label", yaxis_autorange="reversed")
        F.class_axis(fig, d, "x")
        F.class_axis(fig, d, "y")
        F.show_figure(fig, "data_transition")

with st.expander("Per-class table"):
    tab = pd.DataFrame({"class": ds.class_names, "given": np.bincount(d.y_noisy, minlength=c)})
    if d.y_clean is not None:
        tab["clean"] = np.bincount(d.y_clean, minlength=c)
        tab["wrong given labels"] = np.bincount(d.y_clean[d.is_noisy], minlength=c)
    st.dataframe(tab, hide_index=True)
ui.show_jobs(run_id, key="data_jobs")
