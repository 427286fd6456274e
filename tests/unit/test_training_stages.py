"""Training stages on the tiny model: losses fall, exactly the right parameters learn, stage 3 leaves documents alone,
and a resumed run continues identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clara_plugins.training.config import TrainConfig
from clara_plugins.training.data import QARow, Stage1Row, load_stage1
from clara_plugins.training.stages import make_stage
from clara_plugins.training.trainer import train

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "clara_example" / "pretrain_data.jsonl"


@pytest.fixture(scope="module")
def stage1_rows() -> list[Stage1Row]:
    if not DATA.exists():
        pytest.skip("shared example data not present")
    rows = load_stage1(DATA)[:6]
    # short documents and two QA pairs keep the tiny model's sequences small
    return [Stage1Row("qa", r.questions[:2], r.answers[:2], [r.docs[0][:120]]) for r in rows]


@pytest.fixture(scope="module")
def qa_rows(stage1_rows) -> list[QARow]:
    docs = [r.docs[0] for r in stage1_rows]
    rows = []
    for i, r in enumerate(stage1_rows):
        others = [docs[(i + j) % len(docs)] for j in (1, 2, 3)]
        cands = [others[0], r.docs[0], others[1], others[2]] if i % 2 else [r.docs[0], *others]
        rows.append(QARow(r.questions[0], cands, [r.answers[0]], [cands.index(r.docs[0])]))
    return rows


def _config(tmp_path: Path, stage: str, **kw) -> TrainConfig:
    base = {
        "stage": stage,
        "output_dir": str(tmp_path / f"run{stage}"),
        "batch_size": 6,
        "learning_rate": 1e-2,
        "log_every": 1,
        "progress": False,
        "eval_generate": False,
        "plot": False,
        "freeze_dropout": True,
        "top_k": 2,
        "max_docs": 2,
        "temperature": 0.05,
        "schedule": "constant",
    }
    return TrainConfig(**{**base, **kw})


def _losses(cfg: TrainConfig) -> list[float]:
    lines = (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)]


def _rows_for(stage: str, stage1_rows, qa_rows):
    return stage1_rows if stage == "1" else qa_rows


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.peft_model.named_parameters()}


def _changed(model, before) -> set[str]:
    return {n for n, p in model.peft_model.named_parameters() if not torch.equal(p, before[n])}


def _groups(names: set[str]) -> set[str]:
    out = set()
    for n in names:
        role = next((r for r in ("compressor", "query_reasoner", "generator") if f".{r}." in n), None)
        out.add(role or n.split(".")[-2] + "." + n.split(".")[-1])
    return out


@pytest.mark.parametrize("stage", ["1", "2", "3", "retrieval"])
def test_loss_falls(stage, fresh_tiny_model, stage1_rows, qa_rows, tmp_path) -> None:
    cfg = _config(tmp_path, stage, max_steps=8)
    train(cfg, fresh_tiny_model, rows=_rows_for(stage, stage1_rows, qa_rows))
    losses = _losses(cfg)
    assert len(losses) == 8
    assert losses[-1] < 0.9 * losses[0], losses
    assert (Path(cfg.output_dir) / "final").is_dir()


EXPECTED = {
    "1": {"compressor", "generator", "embed_tokens.weight"},
    "2": {"compressor", "generator"},
    "3": {"query_reasoner", "generator"},
    "retrieval": {"query_reasoner"},
}


@pytest.mark.parametrize("stage", ["1", "2", "3", "retrieval"])
def test_gradients_reach_exactly_the_trained_parameters(stage, fresh_tiny_model, stage1_rows, qa_rows) -> None:
    model = fresh_tiny_model
    st = make_stage(TrainConfig(stage=stage, train_file="x", top_k=2, max_docs=2))
    trained = st.prepare(model)
    loss, _ = st.loss(model, _rows_for(stage, stage1_rows, qa_rows)[:3])
    loss.backward()
    with_grad = {n for n, p in model.peft_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert _groups(with_grad) == EXPECTED[stage]
    assert {id(p) for _, p in trained} == {id(p) for _, p in model.peft_model.named_parameters() if p.requires_grad}
    emb = model.peft_model.get_input_embeddings().weight
    if stage == "1":  # only the memory-token rows get gradient
        rows_with_grad = emb.grad.abs().sum(1).nonzero().flatten().tolist()
        assert rows_with_grad == sorted(model.special_token_ids.mem)
    st.finish(model)


@pytest.mark.parametrize("stage", ["1", "2", "3", "retrieval"])
def test_nothing_frozen_changes(stage, fresh_tiny_model, stage1_rows, qa_rows, tmp_path) -> None:
    model = fresh_tiny_model
    before = _snapshot(model)
    train(_config(tmp_path, stage, max_steps=2, weight_decay=0.1), model, rows=_rows_for(stage, stage1_rows, qa_rows))
    changed = _changed(model, before)
    assert _groups(changed) == EXPECTED[stage] - ({"generator"} if stage == "retrieval" else set())
    if stage == "1":
        emb = model.peft_model.get_input_embeddings().weight
        diff_rows = (emb != before["base_model.model.model.embed_tokens.weight"]).any(1).nonzero().flatten().tolist()
        assert diff_rows == sorted(model.special_token_ids.mem)


@pytest.mark.parametrize("stage", ["3", "retrieval"])
def test_stage3_keeps_document_encoding(stage, fresh_tiny_model, qa_rows, tmp_path) -> None:
    model = fresh_tiny_model
    docs = sorted({d for r in qa_rows for d in r.docs})[:4]
    mem_before = model.compress([d[:150] for d in docs])
    fp_before = model.fingerprint
    query_before = model.encode_query(["who is it?"])
    train(_config(tmp_path, stage, max_steps=3), model, rows=qa_rows)
    assert torch.equal(model.compress([d[:150] for d in docs]), mem_before)
    assert model.fingerprint == fp_before
    assert not torch.equal(model.encode_query(["who is it?"]), query_before)  # the query side did learn


@pytest.mark.parametrize("in_batch", [True, False])
def test_retrieval_train_compressor_is_a_dual_encoder(in_batch, fresh_tiny_model, qa_rows, tmp_path) -> None:
    """``train_compressor``: the compressor learns beside the query reasoner (and nothing else does); the loss falls
    and documents are then encoded differently (the model's fingerprint changes with them)."""
    model = fresh_tiny_model
    docs = sorted({d for r in qa_rows for d in r.docs})[:3]
    mem_before, fp_before, before = model.compress(docs), model.fingerprint, _snapshot(model)
    cfg = _config(tmp_path, "retrieval", max_steps=8, train_compressor=True, in_batch_negatives=in_batch)
    train(cfg, model, rows=qa_rows)
    losses = _losses(cfg)
    assert losses[-1] < 0.9 * losses[0], losses
    assert _groups(_changed(model, before)) == {"query_reasoner", "compressor"}
    assert not torch.equal(model.compress(docs), mem_before)
    assert model.fingerprint != fp_before


def test_stage2_with_frozen_compressor_trains_the_generator_alone(fresh_tiny_model, qa_rows, tmp_path) -> None:
    model = fresh_tiny_model
    docs = sorted({d for r in qa_rows for d in r.docs})[:3]
    mem_before, before = model.compress(docs), _snapshot(model)
    cfg = _config(tmp_path, "2", max_steps=8, train_compressor=False)
    train(cfg, model, rows=qa_rows)
    losses = _losses(cfg)
    assert losses[-1] < 0.9 * losses[0], losses
    assert _groups(_changed(model, before)) == {"generator"}
    assert torch.equal(model.compress(docs), mem_before)


@pytest.mark.parametrize(("stage", "value"), [("1", False), ("3", True)])
def test_train_compressor_cannot_break_stages_1_and_3(stage, value) -> None:
    from clara_plugins.errors import ConfigError

    with pytest.raises(ConfigError, match="train_compressor"):
        TrainConfig(stage=stage, train_compressor=value)


def test_stage2_fresh_generator_and_stage3_copies_compressor(fresh_tiny_model) -> None:
    model = fresh_tiny_model
    make_stage(TrainConfig(stage="2", train_file="x")).prepare(model)
    gen_b = [p for n, p in model.peft_model.named_parameters() if ".generator." in n and "lora_B" in n]
    assert all(torch.count_nonzero(p) == 0 for p in gen_b)  # peft's fresh init: the base model's behaviour
    make_stage(TrainConfig(stage="3", train_file="x")).prepare(model)
    params = dict(model.peft_model.named_parameters())
    for name, p in params.items():
        if ".query_reasoner." in name:
            assert torch.equal(p, params[name.replace(".query_reasoner.", ".compressor.")])


def test_resume_continues_identically(fresh_tiny_model, qa_rows, tmp_path) -> None:
    import copy

    start = copy.deepcopy(fresh_tiny_model)
    kw = {"max_steps": 6, "batch_size": 2, "freeze_dropout": False, "schedule": "cosine", "warmup_ratio": 0.2}
    full = train(_config(tmp_path / "a", "2", save_every=3, **kw), fresh_tiny_model, rows=qa_rows)
    ckpt = tmp_path / "a" / "run2" / "checkpoint-3"
    assert (ckpt / "trainable.safetensors").is_file() and (ckpt / "model").is_dir()
    resumed = train(_config(tmp_path / "b", "2", resume_from=str(ckpt), **kw), start, rows=qa_rows)
    a, b = _snapshot(full), _snapshot(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert _losses(_config(tmp_path / "a", "2"))[3:] == _losses(_config(tmp_path / "b", "2"))


def test_gradient_checkpointing_gives_the_same_update(fresh_tiny_model, qa_rows, tmp_path) -> None:
    import copy

    other = copy.deepcopy(fresh_tiny_model)
    a = train(_config(tmp_path / "a", "2", max_steps=1), fresh_tiny_model, rows=qa_rows)
    b = train(_config(tmp_path / "b", "2", max_steps=1, gradient_checkpointing=True), other, rows=qa_rows)
    sa, sb = _snapshot(a), _snapshot(b)
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-4, atol=1e-6)
    assert not b.base_lm.is_gradient_checkpointing  # switched off again after the run


def test_bf16_run_with_held_out_metrics(fresh_tiny_model, qa_rows, tmp_path) -> None:
    cfg = _config(tmp_path, "3", max_steps=2, precision="bf16", eval_every=1, eval_generate=True, max_new_tokens=3)
    train(cfg, fresh_tiny_model, rows=qa_rows, eval_rows=qa_rows[:3])
    records = [json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    final = records[-1]
    assert {"eval_loss", "eval_recall@1", "eval_recall@5", "eval_ndcg@10", "eval_f1", "eval_em"} <= set(final)
    assert fresh_tiny_model.dtype == torch.float32  # autocast, weights stay fp32


def test_retrieval_in_batch_negatives_share_positives_by_text(fresh_tiny_model):
    """Two questions about one passage: that passage is a positive of both, the other's candidates negatives."""
    from clara_plugins.training.stages import RetrievalStage

    model = fresh_tiny_model
    rows = [
        QARow("who wrote it?", ["passage about a book", "passage about a river"], ["-"], [0]),
        QARow("when was it written?", ["passage about a book", "passage about a town"], ["-"], [0]),
        QARow("how long is the river?", ["passage about a river", "passage about a book"], ["-"], [0]),
    ]
    stage = RetrievalStage(TrainConfig(stage="retrieval"))
    stage.prepare(model)
    try:
        loss, logs = stage.loss(model, rows)
        stage.config.in_batch_negatives = False
        own, _ = stage.loss(model, rows)
        loss.backward()
    finally:
        stage.finish(model)
    assert torch.isfinite(loss) and loss.item() != pytest.approx(own.item())
    assert "recall@2" in logs and 0 <= logs["in_batch_recall@1"] <= 100
