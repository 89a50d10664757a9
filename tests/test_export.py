"""Masks as files, the LoRA-matched scope, and the export to a peft SHiRA adapter."""

import json

import pandas as pd
import pytest
import torch

import salience_bench as sb
from salience_bench.export import check_masks, load_masks, save_masks, to_peft_shira, weights_fingerprint

from .conftest import run_cli, tiny_args, tiny_batches, tiny_bert


def grad_masks(model, **spec):
    return sb.make_mask(sb.score(model, tiny_batches(), ["grad"])["grad"], **spec)


def test_mask_files_round_trip_bit_for_bit(tmp_path):
    model = tiny_bert()
    masks = grad_masks(model, density=0.1)
    params = sb.eligible_parameters(model)
    meta = {"metric": "grad", "density": 0.1, "weights_fingerprint": weights_fingerprint(params)}
    save_masks(tmp_path / "grad.safetensors", masks, meta)
    loaded, metadata = load_masks(tmp_path / "grad.safetensors")
    assert metadata == meta and list(loaded) == list(masks)
    for name in masks:
        assert torch.equal(loaded[name], masks[name]) and loaded.indices(name).dtype == torch.int32
    check_masks(loaded, params, metadata)  # the same model: accepted
    other = tiny_bert(seed=1)
    with pytest.raises(sb.SalienceBenchError, match="made for other weights"):
        check_masks(loaded, sb.eligible_parameters(other), metadata)
    with pytest.raises(sb.SalienceBenchError, match="covers other tensors"):
        check_masks(loaded, sb.eligible_parameters(model, include=["*query.weight"]), metadata)
    (tmp_path / "junk.safetensors").write_bytes(b"not a mask file")
    with pytest.raises(sb.SalienceBenchError, match="cannot read mask file"):
        load_masks(tmp_path / "junk.safetensors")


def test_lora_scope_gives_every_tensor_exactly_r_times_m_plus_n():
    model = tiny_bert()
    masks = grad_masks(model, scope="lora", rank=3)
    scores = sb.score(model, tiny_batches(), ["grad"])["grad"]
    for name, p in sb.eligible_parameters(model).items():
        budget = 3 * (p.shape[0] + p.shape[1])
        assert int(masks[name].sum()) == budget
        assert torch.equal(masks[name], sb.make_mask({name: scores[name]}, k=budget)[name])  # the layer's own top
    with pytest.raises(sb.SalienceBenchError, match="scope 'lora' needs rank"):
        sb.make_mask(scores, scope="lora")
    with pytest.raises(sb.SalienceBenchError, match="use a rank ≤"):
        sb.make_mask(scores, scope="lora", rank=100)


def test_shira_export_trains_exactly_the_mask(tmp_path):
    from peft import PeftModel

    model = tiny_bert()
    masks = grad_masks(model, scope="lora", rank=2)
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = to_peft_shira(model, masks, 2)
    names = list(masks)
    for name in names:
        module = peft_model.get_submodule("base_model.model." + name.rsplit(".", 1)[0])
        rows, cols = module.shira_indices["default"].long()
        selected = torch.zeros_like(masks[name])
        selected[rows, cols] = True
        assert torch.equal(selected, masks[name]), name
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    peft_model.train()
    for batch in tiny_batches(seed=7):
        peft_model(**batch).loss.backward()
        optimizer.step(), optimizer.zero_grad()
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_bert(), tmp_path / "adapter")  # loads as any peft adapter
    merged = reloaded.merge_and_unload()
    after = dict(merged.named_parameters())
    for name in names:
        changed = after[name].detach() != pretrained[name]
        assert changed.any() and not (changed & ~masks[name]).any(), name  # only the masked entries moved
    for name, p in after.items():
        if name not in masks and not name.startswith("classifier"):
            assert torch.equal(p.detach(), pretrained[name]), name
    with pytest.raises(sb.SalienceBenchError, match="exactly r·\\(m\\+n\\)"):
        to_peft_shira(tiny_bert(), grad_masks(tiny_bert(), density=0.1), 2)


def test_cli_saves_loads_and_exports_masks(tiny_model_dir, tmp_path):
    first = tmp_path / "first"
    assert run_cli(*tiny_args(tiny_model_dir, first, "--metrics", "grad,snip", "--save-masks", "--no-figures")).returncode == 0
    manifest = json.loads((first / "manifest.json").read_text())
    assert "masks/grad.safetensors" in manifest["files"]
    second = tmp_path / "second"
    result = run_cli(*tiny_args(tiny_model_dir, second, "--metrics", "grad,fisher", "--load-mask",
                                str(first / "masks" / "grad.safetensors"), "--no-figures", "--train", "--steps", "2",
                                "--baselines", "none"))
    assert result.returncode == 0, result.stderr[-2000:]
    overlap = pd.read_csv(second / "overlap.csv")
    saved_vs_rescored = overlap[(overlap.metric_a == "grad") & (overlap.metric_b == "file:grad") & (overlap.layer == "all")]
    assert float(saved_vs_rescored.jaccard.iloc[0]) == 1.0  # the same model, seed and data: the same mask
    rows = pd.read_csv(second / "downstream.csv")
    assert set(rows.metric) == {"grad", "fisher", "file:grad"}
    other = tmp_path / "other-model"
    tiny_bert(seed=5, vocab_size=30522).save_pretrained(other)
    (other / "tokenizer.json").write_bytes((tiny_model_dir / "tokenizer.json").read_bytes())
    for extra in ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model_dir / extra).exists():
            (other / extra).write_bytes((tiny_model_dir / extra).read_bytes())
    refused = run_cli(*tiny_args(other, tmp_path / "third", "--load-mask", str(first / "masks" / "grad.safetensors")))
    assert refused.returncode == 2 and "made for other weights" in refused.stderr
    adapters = tmp_path / "adapters"
    exported = run_cli(*tiny_args(tiny_model_dir, tmp_path / "fourth", "--metrics", "grad", "--scope", "lora", "--rank", "2",
                                  "--export-peft", str(adapters), "--no-figures"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (adapters / "grad" / "adapter_config.json").is_file()
    assert json.loads((adapters / "grad" / "adapter_config.json").read_text())["peft_type"] == "SHIRA"
