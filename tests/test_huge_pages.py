"""`falcon_hf.kernels.huge_pages`: large CPU weights moved onto 2 MiB pages keep their values, ties, training and
saving, and `generate` moves them once."""

import copy
import gc
import re

import pytest
import torch

from falcon_hf import FalconHFConfig, FalconHFForCausalLM
from falcon_hf.kernels import huge_pages, place_weights_on_huge_pages

from conftest import tiny_config_kwargs

pytestmark = pytest.mark.usefixtures("single_thread")
MADVISE = huge_pages.huge_pages_wanted()
needs_madvise = pytest.mark.skipif(not MADVISE, reason="transparent huge pages are not in `madvise` mode here")
MIB = 2**20


def large_model() -> FalconHFForCausalLM:
    """2 layers whose MLP matrices (2 MiB each) and tied embedding (4 MiB) qualify; the rest stays small."""
    config = FalconHFConfig(**tiny_config_kwargs(vocab_size=4096, hidden_size=256, intermediate_size=2048))
    return FalconHFForCausalLM(config).eval()


def huge_page_bytes(address: int) -> int:
    """AnonHugePages of the mapping holding `address`, from /proc/self/smaps."""
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        inside = False
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                start, end = (int(bound, 16) for bound in line.split()[0].split("-"))
                inside = start <= address < end
            elif inside and line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no mapping holds {address:#x}")


def test_the_mode_is_read_from_the_bracketed_word(monkeypatch, tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(huge_pages, "THP_SETTING", str(setting))
    huge_pages.transparent_huge_pages_mode.cache_clear()
    try:
        assert huge_pages.transparent_huge_pages_mode() == "madvise"
        setting.write_text("[always] madvise never\n")
        huge_pages.transparent_huge_pages_mode.cache_clear()
        assert huge_pages.transparent_huge_pages_mode() == "always"
        monkeypatch.setattr(huge_pages, "THP_SETTING", str(tmp_path / "missing"))
        huge_pages.transparent_huge_pages_mode.cache_clear()
        assert huge_pages.transparent_huge_pages_mode() is None
    finally:
        huge_pages.transparent_huge_pages_mode.cache_clear()


@needs_madvise
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_copy_is_equal_starts_on_a_huge_page_and_gets_huge_pages(dtype):
    tensor = torch.randn(3 * MIB // 4 + 5, 3).to(dtype)  # 9 MiB + 60 bytes in float32: four whole pages and a tail
    copy = huge_pages.copy_to_huge_pages(tensor)
    assert torch.equal(copy, tensor) and copy.shape == tensor.shape and copy.dtype == dtype
    assert copy.data_ptr() % huge_pages.HUGE_PAGE_BYTES == 0
    assert copy.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()  # no padding is kept or saved
    # The kernel may refuse a huge page when memory is fragmented; most of the whole pages must be huge.
    assert huge_page_bytes(copy.data_ptr()) >= 2 * huge_pages.HUGE_PAGE_BYTES


@needs_madvise
def test_large_parameters_move_once_and_keep_values_ties_and_outputs():
    model = large_model()
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    ids = torch.randint(0, 4096, (2, 9))
    logits = model(ids).logits
    mlp = model.transformer.h[0].mlp
    parameters = (mlp.dense_h_to_4h.weight, mlp.dense_4h_to_h.weight)
    small = model.transformer.h[0].self_attention.query_key_value.weight
    small_pointer = small.data_ptr()

    moved = place_weights_on_huge_pages(model)

    assert moved == (4 + 2 * 2 * 2) * MIB  # the tied embedding once, two MLP matrices per layer
    assert model.lm_head.weight is model.transformer.word_embeddings.weight
    for parameter in (*parameters, model.lm_head.weight):
        assert parameter.data_ptr() % huge_pages.HUGE_PAGE_BYTES == 0
    assert small.data_ptr() == small_pointer
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    torch.testing.assert_close(model(ids).logits, logits, rtol=0, atol=0)
    assert place_weights_on_huge_pages(model) == 0

    assert huge_pages.move_weights_off_huge_pages(model) == moved  # the benchmark's A/B undo
    assert not any(hasattr(parameter, huge_pages.PLACED) for parameter in model.parameters())
    assert model.lm_head.weight is model.transformer.word_embeddings.weight
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    assert place_weights_on_huge_pages(model) == moved  # and they can move back


@needs_madvise
def test_moved_parameters_still_train_save_copy_and_share(tmp_path):
    model = large_model()
    with torch.inference_mode():  # as under a pipeline: the moved weights must not become inference tensors
        place_weights_on_huge_pages(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 4096, (2, 9))
    weight = model.transformer.h[1].mlp.dense_4h_to_h.weight
    start = weight.detach().clone()
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    assert not torch.equal(weight, start)

    model.save_pretrained(tmp_path)
    reloaded = FalconHFForCausalLM.from_pretrained(tmp_path)
    copied = copy.deepcopy(model)
    assert copied.lm_head.weight is copied.transformer.word_embeddings.weight
    model.share_memory()  # as before handing a model to torch.multiprocessing workers
    for name, parameter in reloaded.named_parameters():
        assert torch.equal(parameter, model.get_parameter(name)), name
        assert torch.equal(copied.get_parameter(name), model.get_parameter(name)), name


def mapped_files() -> set[str]:
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return {fields[5].strip() for fields in (line.split(maxsplit=5) for line in maps) if len(fields) == 6}


@needs_madvise
def test_placing_a_loaded_checkpoint_lets_its_file_mapping_go(tmp_path):
    """`from_pretrained` maps the safetensors file; once the large weights are placed, the small ones are copied out
    of it too, so that the file is no longer mapped (and its pages no longer resident) while the values stay."""
    large_model().save_pretrained(tmp_path)
    checkpoint = str(next(tmp_path.glob("*.safetensors")).resolve())
    model = FalconHFForCausalLM.from_pretrained(tmp_path).eval()
    expected = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    if checkpoint not in mapped_files():
        pytest.skip("this transformers/safetensors copied the checkpoint instead of mapping it")
    assert place_weights_on_huge_pages(model) > 0
    gc.collect()
    assert checkpoint not in mapped_files()
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, expected[name]), name
    assert huge_pages.copy_out_of_file_mappings(model) == 0  # nothing left inside a file


def test_paging_out_keeps_the_values():
    """`page_out` is a reclaim hint: ordinary memory (an unaligned view, a dirty page) reads back the same."""
    tensor = torch.randn(3 * MIB // 4 + 5)
    expected = tensor.clone()
    view = tensor[3:]
    huge_pages.page_out(view.data_ptr(), view.numel() * view.element_size())
    assert torch.equal(tensor, expected)


@needs_madvise
def test_generate_moves_the_weights_and_gives_the_same_tokens(monkeypatch):
    ids = torch.randint(0, 4096, (1, 6))
    monkeypatch.setenv(huge_pages.DISABLE_ENV, "0")
    model = large_model()
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert not hasattr(model.lm_head.weight, huge_pages.PLACED)  # switched off: nothing moved
    monkeypatch.delenv(huge_pages.DISABLE_ENV)
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), expected)
    assert getattr(model.lm_head.weight, huge_pages.PLACED) == model.lm_head.weight.data_ptr()


def test_nothing_moves_where_huge_pages_are_not_on_request(monkeypatch):
    model = large_model()
    pointer = model.lm_head.weight.data_ptr()
    monkeypatch.setattr(huge_pages, "transparent_huge_pages_mode", lambda: "never")
    assert place_weights_on_huge_pages(model) == 0
    monkeypatch.setattr(huge_pages, "transparent_huge_pages_mode", lambda: "always")  # torch's pages are huge already
    assert place_weights_on_huge_pages(model) == 0
    assert model.lm_head.weight.data_ptr() == pointer


@needs_madvise
def test_meta_and_half_precision_weights():
    with torch.device("meta"):
        meta = large_model()
    assert place_weights_on_huge_pages(meta) == 0
    model = large_model().to(torch.bfloat16)  # 1 MiB MLP matrices now: only the 2 MiB embedding moves
    assert place_weights_on_huge_pages(model) == 2 * MIB
