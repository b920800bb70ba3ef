"""The CLI's sub-commands (one module each, listed in ``maskdiff.cli.COMMAND_MODULES``) and the
few argument parsers they share."""


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    """``"42,731"`` -> ``(42, 731)``; a ValueError naming the flag otherwise."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from err


def parse_names(text: str) -> tuple[str, ...]:
    """``"standard, mirror"`` -> ``("standard", "mirror")``."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_decoding_arguments(parser) -> None:
    """The low-confidence decoder's flags (SPEC §8) and the run's checkpoint and device."""
    parser.add_argument("--gen-length", type=int, help="default: max_len minus the prompt's length")
    parser.add_argument("--steps", type=int, help="default: one token per step")
    parser.add_argument("--block-length", type=int, help="default: one block")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    parser.add_argument("--device", default="cpu")
