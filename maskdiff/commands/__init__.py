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
