"""A real TensorBoard server reads back the per-layer curves, conv1 image and HParams."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from kt_transfer.data import sources
from kt_transfer.networks import caffenet, transfer
from kt_transfer.runs import experiment
from kt_transfer.training import layer_logging


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, body=None):
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    request = urllib.request.Request(url, data=body and json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_serves_per_layer_tags_filters_and_hparams(tiny_config):
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    _, out = experiment.run_treatment(
        tiny_config, dataset, transfer.parse_treatment("AnB", 3), log=lambda *_: None
    )
    logdir = os.path.dirname(out)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            f"--logdir={logdir}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--load_fast=false",
            "--reload_interval=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline, scalars = time.time() + 60, {}
        while time.time() < deadline and "A3B/logs/layers" not in scalars:
            try:
                scalars = _get(f"{base}/plugin/scalars/tags")
            except OSError:
                pass
            time.sleep(0.5)
        tags = scalars["A3B/logs/layers"]
        for name in caffenet.LAYER_NAMES:
            for metric in (
                "weight_norm",
                "grad_norm",
                "update_ratio",
                "effective_lr",
                "activation_mean",
                "zero_fraction",
            ):
                assert f"{name}/{metric}" in tags, (name, metric)
        assert "epoch_top1" in scalars["A3B/logs/validation"]
        assert "conv1/filters" in _get(f"{base}/plugin/images/tags")["A3B/logs/layers"]
        frozen_lr = _get(
            f"{base}/plugin/scalars/scalars?tag=conv1/effective_lr&run=A3B/logs/layers"
        )
        trained_lr = _get(f"{base}/plugin/scalars/scalars?tag=fc8/effective_lr&run=A3B/logs/layers")
        assert frozen_lr[-1][2] == 0.0
        # The solver's own rate: inside the warmup (100 steps in tiny's config), after
        # step s it is base_lr * (s + 1) / warmup_steps, not the bare schedule's base_lr.
        train = tiny_config.train
        for _, step, value in trained_lr:
            want = train.base_lr * min(1.0, (step + 1) / train.warmup_steps)
            assert value == pytest.approx(want, rel=1e-5), (step, value)
        # Gradients on the probe batch: finite and non-zero where the network learns,
        # zero where it is frozen (conv1..conv3 of A3B).
        for name in caffenet.LAYER_NAMES:
            norms = [
                v
                for _, _, v in _get(
                    f"{base}/plugin/scalars/scalars?tag={name}/grad_norm&run=A3B/logs/layers"
                )
            ]
            assert norms and all(np.isfinite(norms)), name
            if name in ("conv1", "conv2", "conv3"):
                assert all(v == 0.0 for v in norms), name
            else:
                assert all(v > 0.0 for v in norms), (name, norms)
        # Weight histograms, one a logged step, of TensorBoard's 30 buckets holding every
        # sampled weight (fc8 is small enough to be whole).
        # (Polled: the server may still be loading the event file.)
        deadline, histograms, logged_steps = time.time() + 30, [], [None]
        while time.time() < deadline and [s for _, s, _ in histograms] != logged_steps:
            logged_steps = [
                step
                for _, step, _ in _get(
                    f"{base}/plugin/scalars/scalars?tag=fc8/grad_norm&run=A3B/logs/layers"
                )
            ]
            if "fc8/weights" in _get(f"{base}/plugin/histograms/tags").get("A3B/logs/layers", {}):
                histograms = _get(
                    f"{base}/plugin/histograms/histograms?tag=fc8/weights&run=A3B/logs/layers"
                )
            time.sleep(0.2)
        assert [step for _, step, _ in histograms] == logged_steps and len(logged_steps) > 1
        fc8_weights = int(np.prod(experiment.load_network(out).get_layer("fc8").kernel.shape))
        for _, _, buckets in histograms:
            assert len(buckets) == 30 and sum(count for _, _, count in buckets) == fc8_weights
        experiment_info = _get(f"{base}/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment_info["hparamInfos"]}
        assert {"dataset", "split", "mode", "n", "copied_lr_mult", "seed"} <= names
    finally:
        server.terminate()
        server.wait()


def test_filter_grid_tiles_every_filter():
    kernel = np.random.default_rng(0).normal(size=(11, 11, 3, 10)).astype("float32")
    grid = layer_logging.filter_grid(kernel)
    assert grid.shape == (1, 3 * 12 + 1, 4 * 12 + 1, 3)
    assert grid.min() >= 0.0 and grid.max() <= 1.0


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).normal(size=70_000).astype("float32"),
        np.full(10, 0.25, np.float32),
        np.array([], np.float32),
        np.array([-1.0, 3.0]),
        np.array([0.5, np.nan, 2.0]),
        np.array([0.5, np.inf, -1.0]),
    ],
    ids=["normal", "one value", "empty", "two values", "nan", "inf"],
)
def test_histogram_buckets_are_tensorboards_own(values):
    from tensorboard.plugins.histogram import summary_v2

    want = summary_v2._buckets(values).numpy()
    got = layer_logging.histogram_buckets(values)
    assert got.shape == want.shape == (30, 3)
    np.testing.assert_array_equal(got[:, 2], want[:, 2])  # counts, exactly
    np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=1e-12, atol=1e-15)
