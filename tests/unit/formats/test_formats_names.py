"""File names an upload may use, and pickle refused whatever its name."""
from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from hub.errors import UnexpectedFile, UnsupportedFormat
from hub.formats import check_file_name, reject_pickle


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors", "README.md"])
def test_known_adapter_files_are_accepted(name):
    check_file_name(name)


@pytest.mark.parametrize("name", [
    "adapter_model.bin", "pytorch_model.bin", "model.pt", "weights.PTH", "state.pkl",
    "last.ckpt"])
def test_pickle_file_names_are_refused_with_conversion_advice(name):
    with pytest.raises(UnsupportedFormat) as info:
        check_file_name(name)
    assert info.value.status == 415
    assert "safe_serialization=True" in info.value.detail
    assert "from safetensors.torch import save_file" in info.value.detail


@pytest.mark.parametrize("name", [
    "", "notes.txt", "readme.md", "adapter_config.json.bak", "../adapter_config.json",
    "dir/README.md", "dir\\README.md", "..", "README.md\n", "README\x00.md",
    "adapter_config\u202e.json", ".env"])
def test_other_names_paths_and_control_characters_are_refused(name):
    with pytest.raises(UnexpectedFile) as info:
        check_file_name(name)
    assert info.value.status == 400


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_bytes_under_a_safetensors_name_are_refused(tmp_path, protocol):
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=protocol))
    with pytest.raises(UnsupportedFormat, match="pickle"):
        reject_pickle(path.name, path)


def test_torch_save_zip_under_a_safetensors_name_is_refused(tmp_path):
    path = tmp_path / "adapter_model.safetensors"
    torch.save({"lora_A": torch.zeros(2, 2)}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(UnsupportedFormat, match="save_file"):
        reject_pickle(path.name, path)


def test_zip_without_a_pickle_is_left_to_the_format_checks(tmp_path):
    path = tmp_path / "adapter_model.safetensors"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "hello")
    reject_pickle(path.name, path)


def test_real_safetensors_file_is_not_mistaken_for_pickle(adapters, tmp_path):
    reject_pickle("adapter_model.safetensors", adapters["lora"] / "adapter_model.safetensors")
    # A header of 0x0280 bytes starts with the same two bytes as a protocol-2 pickle.
    path = tmp_path / "adapter_model.safetensors"
    head = b'{"__metadata__":{"pad":"' + b" " * (0x280 - 27) + b'"}}'
    path.write_bytes(len(head).to_bytes(8, "little") + head)
    assert path.read_bytes()[:2] == b"\x80\x02"
    reject_pickle(path.name, path)
