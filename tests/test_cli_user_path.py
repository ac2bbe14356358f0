"""The user's path through the real entry point (``python -m lightning_redllm``): resuming never
swaps the model or drops a change silently, a bad checkpoint or recipe is one line naming the file,
a run folder holds one run, export -> generate needs nothing else, predict writes its scores, a run's
saved config re-runs into a new folder, and the inputs of issue 18 (a non-checkpoint file, a user
objective returning a tuple, a damaged shard met on every pass, DeepSpeed on a CPU, a failed start, a
NaN stop) end in one line each with nothing on disk lost."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FAST = ["--trainer.val_check_interval", "100", "--data.init_args.seq_len", "64", "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0", "--data.init_args.val_batches", "2",
        "--trainer.enable_progress_bar", "false"]


def cli(args, cwd, timeout=300, **extra_env):
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_REDLLM_TRACEBACK"} | extra_env
    return subprocess.run([sys.executable, "-m", "lightning_redllm", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(r) -> list[str]:
    """stderr lines that are not progress/info chatter: the error and its optional hint."""
    return [ln for ln in r.stderr.splitlines() if ln.startswith(("error:", "hint:", "Traceback"))
            or ln.startswith("python -m lightning_redllm")]


def one_error(r, *needles: str) -> str:
    assert r.returncode != 0, r.stdout[-2000:]
    lines = error_lines(r)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert 1 <= len(lines) <= 2 and lines[0].startswith(("error:", "python -m")), r.stderr[-3000:]
    if len(lines) == 2:
        assert lines[1].startswith("hint:"), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 4-step RedLLM run and DecLLM run (tiny, CPU), shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for family, extra in (("redllm", []), ("decllm", ["--model", "DecLLMModule"])):
        r = cli(["fit", *extra, *FAST, "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1",
                 "--trainer.default_root_dir", family], cwd=root)
        assert r.returncode == 0, r.stderr[-3000:]
        out[family] = root / family / "checkpoints" / "last.ckpt"
    return root, out


def test_resume_refuses_the_other_family(runs, tmp_path):
    _, ckpt = runs
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--trainer.default_root_dir", str(tmp_path),
             "--ckpt_path", str(ckpt["decllm"])], cwd=tmp_path)
    one_error(r, str(ckpt["decllm"]), "decllm", "redllm")
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").glob("*.ckpt"))


def test_resume_refuses_another_optimizer_and_size(runs, tmp_path):
    _, ckpt = runs
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--trainer.default_root_dir", str(tmp_path),
             "--model.init_args.optimizer", "adafactor", "--ckpt_path", str(ckpt["redllm"])], cwd=tmp_path)
    one_error(r, str(ckpt["redllm"]), "adamw", "adafactor")
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--trainer.default_root_dir", str(tmp_path / "b"),
             "--model.init_args.overrides", "{d_model: 64, n_heads: 2, head_dim: 32}",
             "--ckpt_path", str(ckpt["redllm"])], cwd=tmp_path)
    one_error(r, str(ckpt["redllm"]), "d_model")


def test_resume_with_a_changed_lr_applies_it_and_says_so(runs, tmp_path):
    root, ckpt = runs
    # resume in the run's own folder (a copy, so the shared fixture stays as it was)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt["redllm"].read_bytes())
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--trainer.default_root_dir", str(run),
             "--model.init_args.lr", "1e-3", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    note = [ln for ln in r.stderr.splitlines() if "changed hyperparameters" in ln]
    assert len(note) == 1 and "lr 0.003 -> 0.001" in note[0], r.stderr[-2000:]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 6 and state["hyper_parameters"]["lr"] == 1e-3
    assert state["lr_schedulers"][0]["base_lrs"] == [1e-3, 1e-3]  # the new LR really drives the schedule
    assert state["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 1e-3


def test_bad_checkpoints_are_one_line_naming_the_file(runs, tmp_path):
    _, ckpt = runs
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt["redllm"].read_bytes()[:4000])
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--ckpt_path", str(truncated)], cwd=tmp_path)
    one_error(r, str(truncated))
    r = cli(["fit", *FAST, "--ckpt_path", str(tmp_path / "missing.ckpt")], cwd=tmp_path)
    one_error(r, "missing.ckpt", "not found")
    st = tmp_path / "w.safetensors"
    e = cli(["export", "--ckpt", str(ckpt["redllm"]), "--out", str(st)], cwd=tmp_path)
    assert e.returncode == 0, e.stderr
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:2000])
    r = cli(["generate", "--ckpt", str(cut), "--prompt", "hi"], cwd=tmp_path)
    one_error(r, str(cut), "safetensors")
    r = cli(["fit", *FAST, "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "i"),
             "--model.init_args.init_from", str(cut)], cwd=tmp_path)
    one_error(r, str(cut))


def test_a_run_folder_holds_one_run(runs, tmp_path):
    root, ckpt = runs
    before = {p.name: p.stat().st_mtime_ns for p in ckpt["redllm"].parent.glob("*.ckpt")}
    r = cli(["fit", *FAST, "--trainer.max_steps", "2", "--trainer.default_root_dir", "redllm"], cwd=root)
    one_error(r, str(ckpt["redllm"].parent), "already holds")
    assert "--ckpt_path" in r.stderr  # the hint says how to resume
    after = {p.name: p.stat().st_mtime_ns for p in ckpt["redllm"].parent.glob("*.ckpt")}
    assert after == before  # nothing written, no last-v1.ckpt


def test_export_then_generate_needs_no_tokenizer_flag(runs, tmp_path):
    _, ckpt = runs
    st = tmp_path / "model.safetensors"
    e = cli(["export", "--ckpt", str(ckpt["decllm"]), "--out", str(st)], cwd=tmp_path)
    assert e.returncode == 0, e.stderr
    assert oct(st.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    g = cli(["generate", "--ckpt", str(st), "--prompt", "In the beginning", "--max_new_tokens", "4", "--json"],
            cwd=tmp_path)
    assert g.returncode == 0, g.stderr[-2000:]
    assert json.loads(g.stdout.strip().splitlines()[-1])[0]["prompt"] == "In the beginning"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_predict_writes_and_prints_the_scores(runs, tmp_path):
    _, ckpt = runs
    r = cli(["predict", "--config", "recipes/quickstart.yaml", "--ckpt_path", str(ckpt["redllm"]),
             "--data.init_args.seq_len", "64", "--data.init_args.num_workers", "0",
             "--data.init_args.val_batches", "2", "--trainer.default_root_dir", str(tmp_path),
             "--trainer.enable_progress_bar", "false"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(ln) for ln in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert rows and [row["index"] for row in rows] == list(range(len(rows)))
    assert all(row["tokens"] == 32 and 0 < row["nll"] < 20 for row in rows)  # seq 64: 32 encoder + 32 targets
    summary = [ln for ln in r.stdout.splitlines() if ln.startswith("predict:")]
    assert len(summary) == 1 and f"{len(rows)} examples" in summary[0] and "predictions.jsonl" in summary[0]


@pytest.mark.parametrize("content, needles", [
    ("", ["empty"]),
    ("model:\n  init_args:\n    lr: [1, 2\n", ["bad.yaml:3:", "YAML syntax error"]),
    ("model:\n  init_args:\n    lrr: 0.1\n", ["bad.yaml:3", "model.init_args.lrr", "not an option"]),
    ("- a\n- b\n", ["bad.yaml", "mapping"]),
    ("trainer:\n  max_steps: ten\n", ["bad.yaml:2: trainer.max_steps", "expected int", "'ten'"]),
    ("seed_everything: 1\ndata:\n  init_args:\n    on_bad_shard: ignore\n",
     ["bad.yaml:4: data.init_args.on_bad_shard", "'skip'", "'ignore'"]),
])
def test_recipe_errors_are_one_line_naming_file_and_key(content, needles, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    r = cli(["fit", "--config", "quickstart", "--config", str(bad)], cwd=tmp_path)
    line = one_error(r, *needles)
    assert "usage:" not in r.stderr and "__main__.py" not in r.stderr, r.stderr[:500]
    assert str(bad) in line


@pytest.mark.parametrize("args, needles", [
    (["--model.init_args.lrr", "3"], ["--model.init_args.lrr", "not an option", "RedLLMModule"]),
    (["--model.init_args.lr", "fast"], ["--model.init_args.lr", "float", "fast"]),
    (["--trainer.max_stepz", "3"], ["--trainer.max_stepz"]),
    (["--trainer.max_steps", "ten"], ["--trainer.max_steps:", "expected int", "'ten'"]),
    (["--model.init_args.optimizer", "sgd"], ["--model.init_args.optimizer:", "one of", "'adamw'", "'sgd'"]),
])
def test_flag_errors_are_one_line(args, needles, tmp_path):
    r = cli(["fit", *args], cwd=tmp_path)
    one_error(r, *needles)
    assert "usage:" not in r.stderr


def test_c_and_config_behave_the_same(tmp_path):
    """Any config replaces the embedded quickstart, whichever flag spells it."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("trainer:\n  max_steps: 7\n")
    outs = []
    for flag in ("--config", "-c"):
        r = cli(["fit", flag, str(mine), "--print_config"], cwd=tmp_path)
        outs.append((r.returncode, r.stdout))
    assert outs[0] == outs[1]
    assert "quickstart" not in outs[0][1] and "max_steps: 7" in outs[0][1]


def test_strategy_config_flags_merge_key_by_key():
    """jsonargparse would replace the recipe's whole DeepSpeed dict with the flag's one key, as a string."""
    from lightning_redllm.cli.lightning_cli import split_strategy_config_overrides

    rest, over = split_strategy_config_overrides(
        ["fit", "--trainer.strategy.init_args.config.zero_optimization.reduce_bucket_size", "4194304",
         "--trainer.max_steps", "2", "--trainer.strategy.init_args.config.zero_optimization.offload_optimizer={device: cpu}",
         "--trainer.strategy.init_args.config.bf16.enabled", "false"])
    assert rest == ["fit", "--trainer.max_steps", "2"]
    assert over == [(["zero_optimization", "reduce_bucket_size"], 4194304),
                    (["zero_optimization", "offload_optimizer"], {"device": "cpu"}), (["bf16", "enabled"], False)]


def test_strategy_config_flag_without_a_deepspeed_recipe_is_one_line(tmp_path):
    r = cli(["fit", "--trainer.strategy.init_args.config.zero_optimization.stage", "3", "--trainer.max_steps", "1"],
            cwd=tmp_path)
    one_error(r, "--trainer.strategy.init_args.config.zero_optimization.stage", "strategy/zero3")


# ------------------------------------------------------------------------------------------------
# issue 18: re-running a saved config, and the inputs that crashed


def _files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its mtime: 'nothing on disk lost or touched'."""
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _losses(metrics_csv: Path) -> list[tuple[int, str]]:
    import csv

    rows = list(csv.DictReader(metrics_csv.open()))
    return [(int(r["step"]), r["train/loss"]) for r in rows if r.get("train/loss")]


def test_a_saved_config_reruns_into_a_new_folder(runs):
    """The Lightning habit: ``fit --config <run>/logs/version_0/config.yaml --trainer.default_root_dir NEW``.
    The saved config names the run's folders relative to ``default_root_dir``, so the re-run writes
    checkpoints and logs into NEW (not refused as 'already holds another run's checkpoints') and,
    same seed and data, gives the same losses and weights; the original run is untouched."""
    root, ckpt = runs
    original = root / "redllm"
    saved = original / "logs" / "version_0" / "config.yaml"
    before = _files(original)
    r = cli(["fit", "--config", str(saved.relative_to(root)), "--trainer.default_root_dir", "refit"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _files(original) == before  # no file of the original run written, none added (no version_1)
    new = root / "refit"
    assert (new / "checkpoints" / "last.ckpt").is_file() and (new / "logs" / "version_0" / "metrics.csv").is_file()
    old_losses = _losses(original / "logs" / "version_0" / "metrics.csv")
    assert [step for step, _ in old_losses] == [0, 1, 2, 3]
    assert _losses(new / "logs" / "version_0" / "metrics.csv") == old_losses
    a = torch.load(ckpt["redllm"], weights_only=True)["state_dict"]
    b = torch.load(new / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deepspeed_config_dumps_as_a_mapping_and_deepspeed_on_a_cpu_is_one_line(tmp_path):
    """``--print_config`` (and the run's saved config.yaml, same dumper) wrote DeepSpeed's config
    dict as a quoted Python repr, which reloads as a string (a path); it is a YAML mapping that
    reloads as the same dict. DeepSpeed on a machine without a GPU: one line, not Lightning's traceback."""
    import yaml

    r = cli(["fit", "--config", "quickstart", "--config", "strategy/zero3", "--print_config"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    printed = yaml.safe_load(r.stdout)  # the whole stdout is the config (no DeepSpeed notice in it)
    config = printed["trainer"]["strategy"]["init_args"]["config"]
    assert isinstance(config, dict) and config["zero_optimization"]["stage"] == 3, config
    saved = tmp_path / "zero3-run.yaml"
    saved.write_text(r.stdout)
    r = cli(["fit", "--config", str(saved), "--print_config"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert yaml.safe_load(r.stdout)["trainer"]["strategy"]["init_args"]["config"] == config
    if torch.cuda.is_available():
        return  # the refusal below is for machines without a CUDA GPU (CI)
    r = cli(["fit", "--config", "quickstart", "--config", "strategy/zero3", "--trainer.accelerator", "cpu",
             "--trainer.default_root_dir", "z"], cwd=tmp_path)
    line = one_error(r, "recipes/strategy/zero3.yaml:", "DeepSpeed", "CUDA GPUs only", "trainer.accelerator is cpu")
    assert "strategy/cpu" in r.stderr, line  # the hint names the way out
    assert not (tmp_path / "z").exists()


def test_a_file_that_is_no_checkpoint_is_one_line_for_every_reader(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli(["generate", "--ckpt", str(text), "--prompt", "hi"], cwd=tmp_path)
    one_error(r, str(text), "not a torch checkpoint")
    r = cli(["export", "--ckpt", str(text), "--out", str(tmp_path / "w.safetensors")], cwd=tmp_path)
    one_error(r, str(text), "not a torch checkpoint")
    assert not (tmp_path / "w.safetensors").exists()
    r = cli(["generate", "--ckpt", str(empty), "--prompt", "hi"], cwd=tmp_path)
    one_error(r, str(empty), "holds no checkpoint")
    assert text.read_text() == "hello\n" and not any(empty.iterdir())


def test_init_from_names_what_it_loaded_and_a_mismatch_names_only_used_keys(runs, tmp_path):
    """A DecLLM checkpoint into the (default) RedLLM: the family, not encoder/decoder layer counts a
    DecLLM does not have. The failed start leaves the run folder as it was (no empty version_1, no
    tb/ or checkpoints/). A matching init_from says what it loaded: file, step, parameters."""
    _, ckpt = runs
    run = tmp_path / "run"
    (run / "logs" / "version_0").mkdir(parents=True)
    (run / "logs" / "version_0" / "metrics.csv").write_text("step,train/loss\n0,8.3\n")  # an earlier run's log
    before = _files(run)
    r = cli(["fit", *FAST, "--trainer.max_steps", "1", "--trainer.default_root_dir", str(run),
             "--model.init_args.init_from", str(ckpt["decllm"])], cwd=tmp_path)
    line = one_error(r, str(ckpt["decllm"]), "family: checkpoint 'decllm' vs model 'redllm'")
    assert "n_encoder_layers" not in line and "n_decoder_layers" not in line and "n_layers" not in line, line
    assert _files(run) == before and sorted(p.name for p in run.iterdir()) == ["logs"]
    r = cli(["fit", "--model", "DecLLMModule", *FAST, "--trainer.max_steps", "1", "--trainer.default_root_dir",
             str(tmp_path / "init"), "--model.init_args.init_from", str(ckpt["decllm"])], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("init_from:")]
    assert loaded == [f"init_from: loaded decllm weights from {ckpt['decllm']} (step 4, 1.38M parameters)"], loaded


TUPLE_OBJECTIVE = '''
from lightning_redllm.modules import RedLLMModule


class TupleRedLLM(RedLLMModule):
    def objective(self, batch):
        out = super().objective(batch)
        return out["encoder_input_ids"], out["decoder_input_ids"], out["labels"]
'''


def test_an_objective_returning_a_tuple_is_one_line_naming_method_and_keys(tmp_path):
    (tmp_path / "tuple_objective.py").write_text(TUPLE_OBJECTIVE)
    r = cli(["fit", "--model.class_path", "tuple_objective.TupleRedLLM", *FAST, "--trainer.max_steps", "2",
             "--trainer.default_root_dir", "run"], cwd=tmp_path, PYTHONPATH=str(tmp_path))
    one_error(r, "TupleRedLLM.objective must return a dict with tensors under 'encoder_input_ids', "
                 "'decoder_input_ids', 'labels'", "returned a tuple of 3")
    assert not (tmp_path / "run").exists()  # it failed before a single batch: no empty run folders left


def _damaged_shards(folder: Path) -> Path:
    """Three tiny shards (three short documents each, a pass is ~2 steps); the second one is cut in the
    middle of its last document, so every pass meets it again."""
    import tarfile

    from lightning_redllm.data.shards import bundled_shards
    from lightning_redllm.data.synthetic import random_documents, write_pretrain_shards

    tokenizer = json.loads((Path(bundled_shards("pretrain", "train")) / "manifest.json").read_text())["tokenizer"]
    docs = random_documents(9, min_len=20, max_len=30, vocab_size=tokenizer["vocab_size"], eos_id=tokenizer["eos_id"],
                            seed=3)
    paths = write_pretrain_shards(folder, docs, docs_per_shard=3, tokenizer=tokenizer)
    bad = Path(paths[1])
    with tarfile.open(bad) as tf:
        last = [m for m in tf.getmembers() if m.name.endswith("tokens.npy")][-1]
    data = bad.read_bytes()
    bad.write_bytes(data[: last.offset_data + last.size // 2])
    return bad


def test_a_damaged_shard_is_counted_and_warned_once_and_reported_at_the_end(tmp_path):
    bad = _damaged_shards(tmp_path / "shards")
    size = bad.stat().st_size
    r = cli(["fit", *FAST, "--data.init_args.train_shards", str(tmp_path / "shards"),
             "--data.init_args.on_bad_shard", "skip", "--data.init_args.num_workers", "2",
             "--trainer.max_steps", "10", "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", "run"],
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    warned = [ln for ln in r.stderr.splitlines() if "skipping the rest of a bad shard" in ln]
    assert len(warned) == 1 and bad.name in warned[0], r.stderr[-3000:]
    report = [ln for ln in r.stderr.splitlines() if "shard(s) given up in this run" in ln]
    assert len(report) == 1 and "data: 1 shard(s) given up" in report[0] and bad.name in report[0], report
    import csv

    rows = [row for row in csv.DictReader((tmp_path / "run" / "logs" / "version_0" / "metrics.csv").open())
            if row.get("data/bad_shards")]
    assert rows and float(rows[-1]["data/bad_shards"]) == 1.0 and int(rows[-1]["step"]) >= 9, rows
    # the shard was read on several passes (so a per-read count would be > 1): documents seen > 9
    assert float(rows[-1]["data/documents"]) > 9, rows[-1]
    assert bad.stat().st_size == size


def test_a_nan_stop_is_one_line_and_keeps_its_checkpoint(tmp_path):
    faults = REPO / "tests" / "faults"
    r = cli(["fit", "--model.class_path", "fault_helpers.NaNRedLLM", "--model.init_args.bad_steps", "[1]",
             "--model.init_args.nan_policy", "stop", *FAST, "--trainer.max_steps", "3",
             "--trainer.default_root_dir", "run"], cwd=tmp_path, PYTHONPATH=f"{faults}{os.pathsep}{REPO / 'tests'}")
    one_error(r, "NonFiniteLossError", "nonfinite-step1.ckpt")
    assert "weights_only" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
    assert torch.load(tmp_path / "run" / "nonfinite-step1.ckpt", weights_only=True)["global_step"] == 1
