"""A model told to a person, from its registry card: ``lightseg models`` and the Slicer module (model selector,
tooltip, panel) state size, cost, accuracy and speed in the same words, so the figures can be compared."""
from __future__ import annotations

from .machine import widest_isa


def size_text(card) -> str:
    """``1.23 MB (int8 0.40 MB)``, or ``missing`` when the model file is not installed."""
    path = card.path()
    if not path.is_file():
        return "missing"
    text = f"{path.stat().st_size / 1e6:.2f} MB"
    if card.has_int8() and card.path("int8_file").is_file():
        text += f" (int8 {card.path('int8_file').stat().st_size / 1e6:.2f} MB)"
    return text


def speed_text(card) -> str:
    """``0.42 s (sample.nii.gz, 2 threads, AVX2)``: the recorded end-to-end time, and on what it was measured (the
    widest vector instruction set decides the kernels' speed: an AVX-512 figure is not a laptop's)."""
    speed = card.entry.get("speed")
    if not speed:
        return "-"
    isa = widest_isa(speed.get("machine", ""))
    return f"{speed['wall_s']:.2f} s ({speed['input']}, {speed['threads']} threads{f', {isa}' if isa else ''})"


def title(card) -> str:
    """The title, marked ``[preview]`` while the model is still being validated."""
    return f"{card.title} [preview]" if card.status == "preview" else card.title


def summary(card) -> str:
    """Size, cost, validation Dice and speed, so a user can pick between a fast and an accurate model."""
    facts = [f"{card.params / 1e6:.2f} M parameters"]
    if card.path().is_file():
        facts.append(size_text(card))
    if card.macs:
        facts.append(f"{card.macs / 1e9:.2f} GMAC per slice")
    metrics = card.entry.get("metrics") or {}
    dice = metrics.get("val_dice_mean", metrics.get("dice_mean"))
    if isinstance(dice, (int, float)):
        facts.append(f"validation Dice {dice:.3f}")
    if card.entry.get("speed"):
        facts.append(f"a volume in {speed_text(card)}")
    return ", ".join(facts)


def description(card) -> str:
    """One line: what the model is for, its licence, and its summary."""
    return f"{title(card)} - {card.modality}, {card.task}, licence {card.licence}; {summary(card)}"


def selector_label(card) -> str:
    """A short entry to choose by in a list: title, modality, file size and seconds per volume."""
    extra = [card.modality]
    if card.path().is_file():
        extra.append(f"{card.path().stat().st_size / 1e6:.2f} MB")
    if card.entry.get("speed"):
        extra.append(f"{card.entry['speed']['wall_s']:.1f} s/volume")
    return f"{title(card)} ({', '.join(extra)})"
