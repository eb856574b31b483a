"""One RecBole sequential model trained for a wall-clock budget, then scored on the test users.

Runs inside the RecBole environment (``.bench-venv/recbole``, made by benchmarks/sequential.py
from ``benchmarks/peers/recbole-requirements.txt``), never inside the package's own:

    python benchmarks/peers/recbole_run.py --data DIR --dataset NAME --model SASRec \\
        --seed 0 --budget 120 --out scores.npz

``DIR/NAME/NAME.inter`` is a RecBole atomic file (``user_id``, ``item_id``, ``timestamp``) whose
timestamps are each user's order of events, with no ties. The model, the optimizer and the
training loop are RecBole's with its defaults (the model's yaml, ``overall.yaml`` and the
sequential preset: leave-one-out split ``valid_and_test``, time order, ``MAX_ITEM_LIST_LENGTH``
50, batches of 2,048, Adam at 0.001, cross-entropy over the catalog); the only settings given
are the fields, the seed, CPU, and ``train_neg_sample_args: None`` (which RecBole requires for
its cross-entropy loss). Training stops before the first batch that would end after ``--budget``
seconds (at the mean batch time so far); the model as it is then scores every item for every test user (RecBole's own test
rows: the history up to, not including, the held-out item), and nothing is evaluated here.

Writes ``--out`` (``users``, ``items``: raw ids; ``scores``: float32 users x items; ``target``
and ``last_history``: RecBole's held-out item and the item before it, raw ids; ``history_len``)
and prints one JSON line with the training figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    """Train, score, write the arrays and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder holding NAME/NAME.inter")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", required=True, choices=["SASRec", "BERT4Rec", "GRU4Rec"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, required=True, help="training seconds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value settings from the command line
    torch.set_num_threads(args.threads)

    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    t0 = time.perf_counter()
    work = Path(args.out).resolve().parent
    config = Config(
        model=args.model,
        dataset=args.dataset,
        config_dict={
            "data_path": str(Path(args.data).resolve()),
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "train_neg_sample_args": None,
            "seed": args.seed,
            "use_gpu": False,
            "device": "cpu",
            "show_progress": False,
            "state": "ERROR",
            "checkpoint_dir": str(work / "saved"),
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    load_seconds = time.perf_counter() - t0

    # RecBole's Trainer._train_epoch (no AMP, no gradient clipping: the defaults), stopped at
    # the budget
    batches_per_epoch = len(train_data)
    epoch_seconds: list[float] = []
    losses: list[float] = []
    batches = 0
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    deadline = start + args.budget
    stopped = False
    for epoch in range(config["epochs"]):
        model.train()
        epoch_start, total = time.perf_counter(), 0.0
        for interaction in train_data:
            now = time.perf_counter()
            mean_batch = (now - start) / batches if batches else 0.0
            if now + mean_batch > deadline:  # this batch would end after the budget
                stopped = True
                break
            interaction = interaction.to(trainer.device)
            trainer.optimizer.zero_grad()
            loss = model.calculate_loss(interaction)
            loss.backward()
            trainer.optimizer.step()
            total += float(loss.item())
            batches += 1
        if stopped:
            break
        epoch_seconds.append(time.perf_counter() - epoch_start)
        losses.append(total / batches_per_epoch)
        print(f"  epoch {epoch}: {epoch_seconds[-1]:.1f} s, loss {losses[-1]:.4f}", flush=True)
    train_seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)

    # scores of every item for RecBole's test rows
    t1 = time.perf_counter()
    model.eval()
    uid, iid = dataset.uid_field, dataset.iid_field
    seq, seq_len = model.ITEM_SEQ, model.ITEM_SEQ_LEN
    user_tok = dataset.field2id_token[uid]
    item_tok = dataset.field2id_token[iid]
    users, targets, last, lengths, blocks = [], [], [], [], []
    with torch.no_grad():
        for batch in test_data:
            interaction = batch[0].to(trainer.device)
            blocks.append(model.full_sort_predict(interaction).reshape(len(interaction), -1))
            n = interaction[seq_len]
            users.append(interaction[uid].numpy())
            targets.append(interaction[iid].numpy())
            lengths.append(n.numpy())
            last.append(interaction[seq][torch.arange(len(n)), n - 1].numpy())
    scores = torch.cat(blocks).numpy()[:, 1:]  # column 0 is RecBole's padding item
    items = item_tok[1:].astype(np.int64)
    np.savez(
        args.out,
        users=user_tok[np.concatenate(users)].astype(np.int64),
        items=items,
        scores=scores.astype(np.float32),
        target=item_tok[np.concatenate(targets)].astype(np.int64),
        last_history=item_tok[np.concatenate(last)].astype(np.int64),
        history_len=np.concatenate(lengths).astype(np.int64),
    )
    done = len(epoch_seconds)
    print(
        json.dumps(
            {
                "model": args.model,
                "recbole": recbole.__version__,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "budget_seconds": args.budget,
                "train_seconds": train_seconds,
                "load_seconds": load_seconds,
                "score_seconds": time.perf_counter() - t1,
                "epochs_completed": done,
                "batches": batches,
                "batches_per_epoch": batches_per_epoch,
                "epochs_trained": batches / batches_per_epoch,
                "first_epoch_seconds": epoch_seconds[0] if done else None,
                "epoch_seconds_estimated": (
                    epoch_seconds[0]
                    if done
                    else train_seconds / max(batches, 1) * batches_per_epoch
                ),
                "epoch_losses": losses,
                "train_examples": len(train_data._dataset),
                "cpu_user_seconds": round(after.ru_utime - before.ru_utime, 2),
                "cpu_system_seconds": round(after.ru_stime - before.ru_stime, 2),
                "minor_page_faults": after.ru_minflt - before.ru_minflt,
            }
        )
    )


if __name__ == "__main__":
    main()
