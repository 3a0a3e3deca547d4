"""Joint RL on a lent GPU for a fixed wall-clock budget, keeping the checkpoint with the best validation fve_nrm.

  python recipes/smollm2-L20/rl_gpu.py data                        # here: rl_gpu_data/{train,val} from run folders
  python recipes/smollm2-L20/rl_gpu.py run MINUTES OUT [key=value]  # there: RL to the deadline, export the best step

`run` starts `nla train rl --config rl_gpu.yaml`, keeps a copy of the best RL checkpoint by validation fve_nrm (the
starting NLA's score, step 0, is reported beside it, not compared: judge the export on held-out tests), stops the
run at the deadline (it resumes from its last periodic checkpoint), exports the best step as an NLA with bf16
adapters, and leaves in OUT what must come back: the metrics, curves, the run's log, and the NLA as a tar in 15 MiB
parts. Reassemble with `cat nla.tar.part* | tar x`, then copy `tokenizer.json` into nla/av and nla/ar from the NLA the
run started from (`nla=`): the tar leaves them out to fit the transfer. The same config runs on a CPU with
`device=cpu autocast=auto`, only slower.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "rl_gpu.yaml"
R = Path("runs/smollm2-L20")
PART = 15 * 2**20


def build_data() -> None:
    """Train: rl_mix (wiki + chat + code activations) and the news/instructions train split; val: 128 wiki rows."""
    from dataclasses import replace

    from nlakit import dataset as ds
    from nlakit.meta import write_dataset_meta

    out = R / "rl_gpu_data"
    ds.split([R / "rl_mix/train", R / "ni_split/train"], out / "all", {"train": 1.0, "val": 0.0, "test": 0.0}, seed=0)
    shutil.rmtree(out / "train", ignore_errors=True)
    (out / "all/train").rename(out / "train")
    shutil.rmtree(out / "all")
    table, meta = ds.load(R / "v1_split/val")
    table = table.slice(0, 128)
    (out / "val").mkdir(parents=True, exist_ok=True)
    ds.write_parquet(out / "val" / ds.part_name(0), table)
    write_dataset_meta(out / "val", replace(meta, row_count=table.num_rows))
    print(f"wrote {out}: train {ds.load(out / 'train')[1].row_count} rows, val {table.num_rows} rows")


def _nla(*args: str) -> list[str]:
    return [sys.executable, "-m", "nlakit", *args]


def _val_rows(metrics: Path) -> list[dict]:
    """The evaluated rows written so far; a last line the trainer is still writing is left for the next poll."""
    if not metrics.is_file():
        return []
    lines = metrics.read_text().split("\n")[:-1]  # only newline-terminated lines are whole
    return [r for r in map(json.loads, filter(str.strip, lines)) if "val_fve_nrm" in r]


def run(minutes: float, dest: Path, overrides: list[str]) -> None:
    from nlakit.meta import read_yaml

    bad = [o for o in overrides if "=" not in o]
    if bad:
        sys.exit(f"override {bad[0]!r} is not key=value, e.g. device=cpu")
    cfg = {**read_yaml(CONFIG), **dict(o.split("=", 1) for o in overrides)}
    out = Path(cfg["out"])
    run_dir, best_dir = out / "train_rl", out / "best_checkpoint"
    dest.mkdir(parents=True, exist_ok=True)
    log = (dest / "train.log").open("w")
    t0 = time.time()
    proc = subprocess.Popen(_nla("train", "rl", "--config", str(CONFIG), *overrides), stdout=log, stderr=log)
    best, best_step, seen = float("-inf"), None, set()
    start_val = None

    def poll() -> None:
        nonlocal best, best_step, start_val
        for row in _val_rows(run_dir / "metrics.jsonl"):
            step = row["step"]
            if step == 0:
                start_val = row["val_fve_nrm"]
                continue
            ckpt = run_dir / "checkpoints" / f"step_{step:07d}"
            if step in seen or not ckpt.is_dir():
                continue
            seen.add(step)
            print(f"[{(time.time() - t0) / 60:5.1f} min] step {step}: val fve_nrm {row['val_fve_nrm']:.4f}", flush=True)
            if row["val_fve_nrm"] > best:
                tmp = best_dir.with_name(best_dir.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    shutil.copytree(ckpt, tmp)
                except (OSError, shutil.Error):  # the run removed it meanwhile (it keeps the newest two)
                    shutil.rmtree(tmp, ignore_errors=True)
                    continue
                shutil.rmtree(best_dir, ignore_errors=True)
                tmp.rename(best_dir)
                best, best_step = row["val_fve_nrm"], step

    try:
        while proc.poll() is None and time.time() - t0 < minutes * 60:
            time.sleep(3)
            poll()
        poll()
    finally:
        if proc.poll() is None:
            # Killed, not interrupted: a SIGINT that lands in a finaliser is swallowed and the run goes on. Nothing
            # is lost: the best step was copied above, and the run resumes from its last periodic checkpoint.
            proc.kill()
            proc.wait()
    summary = {
        "start_val_fve_nrm": start_val,
        "best_val_fve_nrm": best if best_step is not None else None,
        "best_step": best_step,
        "minutes": round((time.time() - t0) / 60, 2),
        "returncode": proc.returncode,
    }
    print(json.dumps(summary), flush=True)
    for name in ("metrics.jsonl", "curves.png"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, dest / name)
    if best_step is None:
        (dest / "summary.json").write_text(json.dumps(summary, indent=1))
        log.close()
        return
    # Export the best step: a run folder holding only that checkpoint, "resumed" at its own step, writes av/ and ar/.
    export_run = Path(str(out) + "_best")
    shutil.rmtree(export_run, ignore_errors=True)
    shutil.copytree(best_dir, export_run / "train_rl/checkpoints" / f"step_{best_step:07d}")
    shutil.copy(run_dir / "config.yaml", export_run / "train_rl/config.yaml")
    subprocess.run(
        _nla("train", "rl", "--config", str(CONFIG), *overrides, f"out={export_run}", f"max_steps={best_step}"),
        check=True,
        stdout=log,
        stderr=log,
    )
    shipped = Path(str(out) + "_export")  # outside dest: only the parts below must come back
    shutil.rmtree(shipped, ignore_errors=True)
    subprocess.run(
        _nla("export", str(export_run), str(shipped), "--storage-dtype", "bfloat16"), check=True, stdout=log, stderr=log
    )
    tar = shipped.with_suffix(".tar")
    with tarfile.open(tar, "w") as t:  # tokenizers stay behind: they are those of `nla=`, byte for byte
        t.add(shipped, arcname="nla", filter=lambda m: None if m.name.endswith("tokenizer.json") else m)
    data = tar.read_bytes()
    for i in range(0, len(data), PART):
        (dest / f"nla.tar.part{i // PART:03d}").write_bytes(data[i : i + PART])
    summary["minutes"] = round((time.time() - t0) / 60, 2)
    (dest / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"exported step {best_step} (val fve_nrm {best:.4f}) in {summary['minutes']} min", flush=True)
    log.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["data"]:
        build_data()
    elif sys.argv[1:2] == ["run"] and len(sys.argv) >= 4:
        run(float(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
    else:
        sys.exit(__doc__)
