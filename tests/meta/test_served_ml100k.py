"""``recsys-mtl score RUN --support FILE`` serves the run's chosen cold-start method end to end on
the real MovieLens-100K (skipped when absent); users with demographics and no rating (K = 0)
are served from them. Kept fast: one cut-down run (2 ranker epochs, 1 meta epoch, 2 learners)
shared by the module."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from meta.adapt import adapt_users
from meta.cooc import NEIGHBOURS, NeighbourTable, evidence, item_neighbours
from meta.data import load_cold_data
from meta.protocol import Padded
from pipelines.cli import run_command
from pipelines.commands.score import score_command
from recsys_mtl.config import RunConfig
from recsys_mtl.runs.batch import with_bonus
from recsys_mtl.runs.bundle import export_bundle
from recsys_mtl.runs.load import load_run
from recsys_mtl.runs.scoring import CatalogScorer, take_state

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "coldstart-ml100k.yaml"
SETS = [
    "tracking.enabled=false", "train.epochs=2", "model.params.dim=16", "meta.epochs=1",
    "meta.ks=[5,10]", "meta.fold_in_steps=[0,5]", "meta.fold_in_lrs=[0.01]",
    "meta.learners=[{name: maml, params: {steps: 2}}, {name: metric, params: {hidden: 8}}]",
]  # fmt: skip


@pytest.fixture(scope="module")
def ml100k_run(ml100k, tmp_path_factory):
    base = tmp_path_factory.mktemp("served-ml100k")
    with contextlib.chdir(base):
        run_command(str(CONFIG), [f"data.path={ml100k}", *SETS], str(base / "run"), False)
    return base / "run"


def _held_out_support(run_dir: Path, k: int = 5) -> pl.DataFrame:
    """The first ``k`` ratings of three held-out users, under new user ids (raw item ids)."""
    roles = pl.read_parquet(run_dir / "split" / "users.parquet")
    test = roles.filter(pl.col("role") == "test")["uidx"].head(3)
    inter = pl.read_parquet(run_dir / "features" / "interactions.parquet")
    items = pl.read_parquet(run_dir / "features" / "item_features.parquet").select(
        "iidx", "item_id"
    )
    rows = (
        inter.filter((pl.col("interaction") == 1) & pl.col("uidx").is_in(test.implode()))
        .sort("uidx", "ts", "row")
        .group_by("uidx", maintain_order=True)
        .head(k)
        .join(items, on="iidx")
    )
    return rows.select(user=pl.col("uidx") + 100_000, item=pl.col("item_id"), rating="rating")


def test_score_with_support_serves_the_chosen_method_by_default(ml100k_run, tmp_path):
    record = json.loads((ml100k_run / "coldstart" / "served.json").read_text())
    support = tmp_path / "support.csv"
    _held_out_support(ml100k_run).write_csv(support)
    out = tmp_path / "out.parquet"
    report = score_command(str(ml100k_run), 10, str(out), support=str(support))
    assert report["cold_start_learner"] == record["name"]
    assert report["served_by"]["cold_start"] == 3
    got = pl.read_parquet(out).filter(pl.col("served_by") == "cold_start")
    assert got["user_id"].n_unique() == 3 and got.height == 30
    # the same state as adapt_users gives (which reads the same record)
    run = load_run(ml100k_run)
    frame = pl.read_csv(support).rename({"user": "user_id", "item": "item_id"})
    served = adapt_users(run, frame)
    assert served.learner == record["name"]
    if record.get("shrink") not in (None, 1.0):  # the learner's vectors moved toward the new-user
        # state (a cooc variant may rank by the unshrunk state: shrink 1)
        alone = adapt_users(run, frame, learner_dir=ml100k_run / record["learner_dir"])
        shrunk = served.rank_state if record.get("split") else served.state
        assert not torch.allclose(shrunk["user"], alone.state["user"])
        torch.testing.assert_close(shrunk["user_bias"], alone.state["user_bias"])
        if record.get("split"):  # a split variant rates by the learner's own state
            torch.testing.assert_close(served.state["user"], alone.state["user"])
    if record.get("learner_dir") and record.get("shrink") is None:  # that learner, not RUN/meta
        explicit = tmp_path / "explicit.parquet"
        score_command(str(ml100k_run), 10, str(explicit), support=str(support),
                      learner_dir=str(ml100k_run / record["learner_dir"]))  # fmt: skip
        mine = pl.read_parquet(explicit).filter(pl.col("served_by") == "cold_start")
        assert mine["item_id"].to_list() == got["item_id"].to_list()


def _catalog_scores(run, state: dict, task: str) -> torch.Tensor:
    """``(U, n_items)`` raw outputs of ``task`` of each user of ``state`` at the reference time."""
    n, ref = run.ctx.n_items, run.reference
    rows = []
    for j in range(next(iter(state.values())).shape[0]):
        one = {name: v[[j]].expand(n, *v.shape[1:]) for name, v in state.items()}
        batch = {"item": torch.arange(n), "day": torch.full((n,), ref["day"]),
                 "time_bin": torch.full((n,), ref["time_bin"])}  # fmt: skip
        with torch.no_grad():
            rows.append(run.model.score(one, batch)[task])
    return torch.stack(rows)


def _ranking_values(run_dir: Path, run, served, frame: pl.DataFrame, task: str) -> torch.Tensor:
    """``(U, n_items)`` by hand: what a served method ranks new users' catalogs by, the rank
    state's raw ``task`` output, plus for a cooc variant ``w x`` the liked support items' summed
    neighbour similarities (the saved table), each times ``1 + rating_weight x (rating -
    like)``, over the number of support items, plus the table's like prior; support items at
    -inf."""
    record = json.loads((run_dir / "coldstart" / "served.json").read_text())
    values = _catalog_scores(run, served.rank_state or served.state, task)
    cooc = record.get("cooc")
    table = NeighbourTable.load(run_dir / "coldstart" / cooc["file"]) if cooc else None
    for j, user in enumerate(served.user_ids):
        mine = frame.filter(pl.col("user_id") == user)
        seen = run.item_index(mine["item_id"])[0]
        if table is not None:
            bonus = torch.zeros(values.shape[1])
            for s, r in zip(seen.tolist(), mine["rating"].to_list(), strict=True):
                if table.like is None or r >= table.like:
                    w = 1.0 if table.like is None else 1 + table.rating_weight * (r - table.like)
                    bonus.index_add_(0, table.items[s], w * table.sims[s])
            bonus /= len(seen)
            if table.prior is not None:
                bonus += table.prior
            values[j] += cooc["weight"] * bonus
        values[j, seen] = -torch.inf
    return values


def _score_known_and_new(run_dir: Path, tmp_path: Path) -> tuple:
    """``score`` of 4 known users and the held-out users with their first ratings as support:
    ``(support rows, loaded run, known ids, output file, report, (users file, support file))``."""
    rated = _held_out_support(run_dir)
    support = tmp_path / "support.csv"
    rated.write_csv(support)
    run = load_run(run_dir)
    known = run.user_ids.head(4).to_list()
    users = tmp_path / "users.txt"
    users.write_text("\n".join(str(u) for u in [*known, *rated["user"].unique()]) + "\n")
    out = tmp_path / "out.parquet"
    report = score_command(str(run_dir), 10, str(out), users=str(users), support=str(support))
    return rated, run, known, out, report, (users, support)


def _assert_known_as_without_support(
    run_dir: Path, known: list, got: pl.DataFrame, tmp_path: Path
) -> pl.DataFrame:
    """The known users' rows of ``got`` equal the run's scores of them without ``--support``,
    which it returns."""
    alone = tmp_path / "known.txt"
    alone.write_text("\n".join(str(u) for u in known) + "\n")
    plain = tmp_path / "plain.parquet"
    score_command(str(run_dir), 10, str(plain), users=str(alone))
    rows = pl.read_parquet(plain)
    assert got.filter(pl.col("served_by") == "model").equals(rows)
    return rows


def test_new_users_are_ranked_by_the_task_the_protocol_ranked_by(ml100k_run, tmp_path):
    record = json.loads((ml100k_run / "coldstart" / "served.json").read_text())
    assert record["rank_task"] == "interaction"  # what evaluate_coldstart ranked the lists by
    rated, run, known, out, report, (users, support) = _score_known_and_new(ml100k_run, tmp_path)
    even = {t: 1 / 3 for t in run.tasks}
    cold = {"rating": 0.0, "interaction": 1.0, "like": 0.0}
    assert report["rank_by"] == {"model": even, "cold_start": cold}
    meta = pq.read_schema(out).metadata
    assert json.loads(meta[b"recsys_mtl.rank_by"]) == report["rank_by"]
    got = pl.read_parquet(out)
    # a new user's list: the order of the interaction task's scores of the ranking state
    frame = rated.rename({"user": "user_id", "item": "item_id"})
    served = adapt_users(run, frame)
    logits = _ranking_values(ml100k_run, run, served, frame, "interaction")
    for j, user in enumerate(served.user_ids):
        mine = got.filter(pl.col("user_id") == user).sort("rank")
        assert set(mine["served_by"]) == {"cold_start"} and mine.height == 10
        value = logits[j]
        listed = value[run.item_index(mine["item_id"])[0]]
        torch.testing.assert_close(listed, torch.topk(value, 10).values)
        score = torch.tensor(mine["score"].to_numpy(), dtype=torch.float64)
        torch.testing.assert_close(score, torch.sigmoid(listed).double(), atol=1e-5, rtol=0)
    # known users: the default blend, the rows of a run scored without --support
    plain = _assert_known_as_without_support(ml100k_run, known, got, tmp_path)
    # --blend ranks everybody: the new users by it too
    both = tmp_path / "blend.parquet"
    given = score_command(str(ml100k_run), 10, str(both), users=str(users), support=str(support),
                          blend="rating=1,interaction=1,like=1")  # fmt: skip
    assert given["rank_by"] == {"model": even, "cold_start": even}
    blended = pl.read_parquet(both)
    assert blended.filter(pl.col("served_by") == "model").equals(plain)
    new = pl.col("served_by") == "cold_start"
    assert not blended.filter(new)["item_id"].equals(got.filter(new)["item_id"])


def test_users_without_ratings_are_served_from_their_demographics(ml100k_run, tmp_path):
    record = json.loads((ml100k_run / "coldstart" / "served.json").read_text())
    assert record["k0"] == "demographic_ridge"
    assert "demographic_ridge" in record["cold_valid_k0"]
    people = pl.DataFrame({
        "user_id": [200_001, 200_002, 200_003],
        "age": [22, 61, 22], "gender": ["M", "F", "M"],
        "occupation": ["student", "retired", "student"],
    })  # fmt: skip
    meta = tmp_path / "users.csv"
    people.write_csv(meta)
    support = tmp_path / "support.csv"
    rated = _held_out_support(ml100k_run)
    rated.write_csv(support)
    out = tmp_path / "out.parquet"
    users = tmp_path / "users.txt"
    listed = [200_001, 200_002, 200_003, rated["user"][0]]
    users.write_text("\n".join(str(u) for u in listed) + "\n")
    report = score_command(str(ml100k_run), 10, str(out), users=str(users),
                           support=str(support), users_meta=str(meta))  # fmt: skip
    assert report["demographics_only"] == 3 and report["users"] == 4
    assert report["served_by"] == {"model": 0, "cold_start": 4, "popularity": 0}
    got = pl.read_parquet(out)
    lists = {u: got.filter(pl.col("user_id") == u)["item_id"].to_list()
             for u in (200_001, 200_002, 200_003)}  # fmt: skip
    assert all(len(v) == 10 for v in lists.values())
    assert set(got.filter(pl.col("user_id") >= 200_000)["served_by"]) == {"cold_start"}
    assert lists[200_001] == lists[200_003] and lists[200_001] != lists[200_002]
    # the same users through adapt_users: their state is the demographic regression's
    run = load_run(ml100k_run)
    empty = pl.DataFrame(schema={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64})
    adapted = adapt_users(run, empty, users=people)
    assert adapted.rows_used == 0 and adapted.user_ids == [200_001, 200_002, 200_003]
    assert not torch.allclose(adapted.state["user"][0], adapted.state["user"][1])
    torch.testing.assert_close(adapted.state["user"][0], adapted.state["user"][2])
    # ranked by the task the protocol ranked by (at K = 0 too), not by the blend
    assert report["rank_by"]["cold_start"] == {"rating": 0.0, "interaction": 1.0, "like": 0.0}
    logits = _catalog_scores(run, adapted.rank_state or adapted.state, "interaction")
    for j, user in enumerate(adapted.user_ids):
        listed = logits[j][run.item_index(pl.Series(lists[user]))[0]]
        torch.testing.assert_close(listed, torch.topk(logits[j], 10).values)


def test_k0_is_measured_with_its_floors(ml100k_run):
    doc = json.loads((ml100k_run / "coldstart" / "coldstart.json").read_text())
    k0 = {r["labels"]["learner"]: r["metrics"] for r in doc["rows"] if r["labels"]["k"] == 0}
    assert {"item_bias", "item_bias_group", "population", "demographic_ridge"} <= set(k0)
    for m in k0.values():
        assert 0.5 < m["rating/rmse"] < 1.6 and m["users"] == 189


class _Short:
    """A ranking bonus of 1 on the first ``n`` items only."""

    def __init__(self, n: int, task: str) -> None:
        self.n, self.task = n, task

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ones(rows.numel(), self.n)


def _cooc_run(run_dir: Path, tmp_path: Path) -> Path:
    """``run_dir`` where it serves a cooc variant, else a copy serving ``maml_cooc0.5``: its
    neighbour table from the training users' log, a weight large enough to reorder lists."""
    record = json.loads((run_dir / "coldstart" / "served.json").read_text())
    if record.get("cooc"):
        return run_dir
    copy = tmp_path / "cooc-run"
    shutil.copytree(run_dir, copy)
    cfg = RunConfig.model_validate(json.loads((copy / "config.resolved.json").read_text()))
    data = load_cold_data(copy / "features", copy / "split", cfg.meta)
    table = item_neighbours(data.role_ratings("train"), data.n_items)
    table.save(copy / "coldstart" / NEIGHBOURS)
    record.update(name="maml_cooc0.5", kind="learner", learner="maml",
                  learner_dir="meta_train/maml", shrink=0.5, split=True,
                  cooc={"weight": 5.0, "file": NEIGHBOURS, "top": int(table.items.shape[1])})  # fmt: skip
    (copy / "coldstart" / "served.json").write_text(json.dumps(record))
    return copy


def test_a_served_cooc_variant_ranks_new_users_with_its_evidence(ml100k_run, tmp_path):
    run_dir = _cooc_run(ml100k_run, tmp_path)
    record = json.loads((run_dir / "coldstart" / "served.json").read_text())
    rated, run, known, out, report, (users, support) = _score_known_and_new(run_dir, tmp_path)
    assert report["cold_start_learner"] == record["name"]
    got = pl.read_parquet(out)
    # by hand: the rank state's logits plus w x the evidence from the saved table
    frame = rated.rename({"user": "user_id", "item": "item_id"})
    served = adapt_users(run, frame)
    assert served.rank_bonus is not None and served.rank_bonus.task == record["rank_task"]
    values = _ranking_values(run_dir, run, served, frame, record["rank_task"])
    plain = _catalog_scores(run, served.rank_state or served.state, record["rank_task"])
    moved = 0
    for j, user in enumerate(served.user_ids):
        mine = got.filter(pl.col("user_id") == user).sort("rank")
        assert set(mine["served_by"]) == {"cold_start"} and mine.height == 10
        ids = run.item_index(mine["item_id"])[0]
        listed = values[j][ids]
        torch.testing.assert_close(listed, torch.topk(values[j], 10).values)
        score = torch.tensor(mine["score"].to_numpy(), dtype=torch.float64)
        torch.testing.assert_close(score, torch.sigmoid(listed).double(), atol=1e-5, rtol=0)
        alone = torch.where(values[j].isinf(), values[j], plain[j])  # without the evidence
        moved += torch.topk(alone, 10).indices.tolist() != ids.tolist()
    assert moved  # the evidence reorders lists
    # the task values written are the model's (the served state's), not the bonus
    states = _catalog_scores(run, served.state, "rating")
    first = got.filter(pl.col("user_id") == served.user_ids[0]).sort("rank")
    want = states[0][run.item_index(first["item_id"])[0]]
    torch.testing.assert_close(torch.tensor(first["score_rating"].to_numpy()), want)
    # known users: as scored without --support
    _assert_known_as_without_support(run_dir, known, got, tmp_path)
    # the fused tiles (matmul and top-K by groups of items) give the same lists
    tiled = tmp_path / "tiled.parquet"
    score_command(str(run_dir), 10, str(tiled), users=str(users), support=str(support),
                  tile_items=64)  # fmt: skip
    assert pl.read_parquet(tiled)["item_id"].equals(got["item_id"])
    # the bundle (and so the MLflow model) carries the table and serves the same lists
    bundle = export_bundle(run_dir, tmp_path / "bundle")
    assert (bundle / "coldstart" / record["cooc"]["file"]).is_file()
    from_bundle = tmp_path / "bundle.parquet"
    score_command(str(bundle), 10, str(from_bundle), users=str(users), support=str(support))
    assert pl.read_parquet(from_bundle).equals(got)
    # items past the table (grown into the catalog later) get no bonus; another blend, none
    scorer = CatalogScorer(run.model, run.tasks, {"interaction": 1.0, "rating": 0.0, "like": 0.0},
                           run.reference, run.ctx.rating_scale)  # fmt: skip
    short = _Short(run.ctx.n_items - 2, record["rank_task"])
    wrapped, state_of = with_bonus(scorer, lambda r: take_state(served.state, r), short)
    rows = torch.arange(2)
    base, got = scorer.block(take_state(served.state, rows)), wrapped.block(state_of(rows))
    torch.testing.assert_close(
        got, base + torch.cat([torch.ones(2, short.n), torch.zeros(2, 2)], 1)
    )
    blend = CatalogScorer(run.model, run.tasks, {"interaction": 1.0, "rating": 1.0, "like": 0.0},
                          run.reference, run.ctx.rating_scale)  # fmt: skip
    assert with_bonus(blend, state_of, short)[0] is blend
    # a support item the table does not cover (grown into the catalog later) adds nothing
    some, table = served.rank_bonus.support, served.rank_bonus.table
    grown = Padded(torch.cat([some.items, torch.full_like(some.items[:, :1], table.n_items)], 1),
                   *(torch.cat([x, x[:, :1]], 1) for x in (some.ratings, some.days,
                                                           some.time_bins)),
                   torch.cat([some.mask, torch.ones_like(some.mask[:, :1])], 1))  # fmt: skip
    n = some.mask.sum(1, keepdim=True).float()
    prior = table.prior if table.prior is not None else torch.zeros(table.n_items)
    torch.testing.assert_close((evidence(table, grown) - prior) * (n + 1),
                               (evidence(table, some) - prior) * n)  # fmt: skip


NEW_ITEMS = ("item_id,genres,year\n5001,Comedy|Romance,1998\n5002,Action|Thriller,1998\n"
             "5003,Drama,1997\n")  # fmt: skip


def _learner_records(run_dir: Path) -> dict[str, dict]:
    """The run's own served record where it names a learner, and a plain ``maml`` one; each
    with new items ranked among themselves by the predicted rating (new users are ranked by
    the interaction task otherwise, so the rule shows)."""
    own = json.loads((run_dir / "coldstart" / "served.json").read_text())
    plain = {k: v for k, v in own.items() if k not in ("cooc", "shrink", "split", "name",
                                                       "learner", "learner_dir")}  # fmt: skip
    plain.update(name="maml", kind="learner", learner="maml", learner_dir="meta_train/maml")
    records = {"maml": plain}
    if own.get("kind") == "learner" and own["name"] != "maml":
        records[own["name"]] = own
    rules = {"model": "rating", "cold_start": "rating"}
    return {n: {**r, "new_items_rank_by": rules} for n, r in records.items()}


def test_a_served_learner_scores_new_items_for_new_users(cli, ml100k_run, tmp_path):
    """``score --support --items-meta`` on a run serving a learner: the learner, saved against
    the run's catalog, serves the grown one; its states are those of the ungrown run."""
    items = tmp_path / "items.csv"
    items.write_text(NEW_ITEMS)
    rated = _held_out_support(ml100k_run)
    old_ids = rated["item"].unique(maintain_order=True).head(3).to_list()
    mixed = pl.DataFrame({"user": [300_001] * 4, "item": [*old_ids, 5001],
                          "rating": [4.0, 3.0, 5.0, 5.0]}).cast(rated.schema)  # fmt: skip
    support = tmp_path / "support.csv"
    pl.concat([rated, mixed]).write_csv(support)
    new_users = rated["user"].unique(maintain_order=True).to_list()
    run = load_run(ml100k_run)
    known = run.user_ids.head(3).to_list()
    users = tmp_path / "users.txt"
    users.write_text("\n".join(str(u) for u in [*known, *new_users, 300_001]) + "\n")
    n_items = run.ctx.n_items + 3
    for name, record in _learner_records(ml100k_run).items():
        run_dir = tmp_path / name
        shutil.copytree(ml100k_run, run_dir)
        (run_dir / "coldstart" / "served.json").write_text(json.dumps(record))

        def score(out: str, *extra: object, tag: str = name) -> tuple[pl.DataFrame, dict]:
            path = tmp_path / f"{tag}-{out}.parquet"
            code, stdout, err = cli("score", tmp_path / tag, "--top-k", n_items, "--out", path,
                                    "--users", users, *extra)  # fmt: skip
            assert code == 0, err
            return pl.read_parquet(path), json.loads(stdout.strip().splitlines()[-1])

        got, report = score("grown", "--support", support, "--items-meta", items)
        assert report["cold_start_learner"] == name and report["new_items"] == 3
        assert report["served_by"] == {"model": 3, "cold_start": 4, "popularity": 0}
        assert report["new_items_rank_by"] == record["new_items_rank_by"]
        new = pl.col("served_by") == "cold_start"
        is_new_item = pl.col("item_id").is_in([5001, 5002, 5003])
        # every new user's list holds the new items they did not rate, ranked among
        # themselves by the run's rule for new users (the predicted rating)
        for user in [*new_users, 300_001]:
            mine = got.filter(pl.col("user_id") == user).sort("rank")
            rated_new = int(user == 300_001)  # rated 5001 and three old items
            assert mine.height == n_items - (4 if rated_new else 5)
            on_new = mine.filter(is_new_item)
            assert on_new.height == 3 - rated_new
            assert on_new["score_rating"].is_sorted(descending=True)
        # known users: the rows of the grown run scored without --support
        alone, _ = score("alone", "--items-meta", items)
        assert got.filter(~new).equals(alone.filter(pl.col("served_by") == "model"))
        # new users rating old items only: the states of the ungrown run (--support alone),
        # so every old item keeps its values and its place among the old items
        plain, p_report = score("plain", "--support", support)
        assert p_report["cold_start_learner"] == name and p_report["support_unknown_items"] == 1
        for user in new_users:
            mine = got.filter((pl.col("user_id") == user) & ~is_new_item).sort("rank")
            before = plain.filter(pl.col("user_id") == user).sort("rank")
            assert mine["item_id"].equals(before["item_id"])
            for col in (c for c in mine.columns if c.startswith("score_")):
                torch.testing.assert_close(torch.tensor(mine[col].to_numpy()),
                                           torch.tensor(before[col].to_numpy()))  # fmt: skip
