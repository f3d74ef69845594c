"""A character tokenizer: one token per character, plus PAD and EOS.

The vocabulary is tiny on purpose: PAD (id 0), EOS (id 1), the digits 0-9 and the few symbols the tasks use.

    encode("12+7=")        -> [3, 4, 12, 9, 15]
    decode([3, 4, 1, 0])   -> "12"          (stops at EOS; PAD is never printed)

PAD fills the rows of a batch after their EOS (see training/rollout.py); it is never a target of the loss.
"""

PAD = "<pad>"
EOS = "<eos>"
PAD_ID = 0
EOS_ID = 1
CHARACTERS = "0123456789+-*="


class UnknownCharacterError(ValueError):
    """A string holds a character that the vocabulary does not have."""


class CharTokenizer:
    """Maps characters to ids and back. ids 0 and 1 are PAD and EOS; then one id per character."""

    def __init__(self, characters: str = CHARACTERS):
        self.tokens = [PAD, EOS] + list(characters)
        self.char_to_id = {ch: i + 2 for i, ch in enumerate(characters)}
        self.pad_id = PAD_ID
        self.eos_id = EOS_ID

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.char_to_id[ch] for ch in text]
        except KeyError as err:
            raise UnknownCharacterError(
                f"character {err.args[0]!r} is not in the vocabulary {''.join(self.char_to_id)!r}"
            ) from None

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        """ids (list or 1-D tensor) -> text. Stops at the first EOS when stop_at_eos; PAD is skipped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i == EOS_ID:
                if stop_at_eos:
                    break
                out.append("$")  # shown as '$' when the caller asks to see past EOS
            elif i != PAD_ID:
                out.append(self.tokens[i])
        return "".join(out)

    def ids_of(self, characters: str) -> list[int]:
        """The ids of some characters, e.g. ids_of("0123456789") for the digit tokens."""
        return self.encode(characters)


TOKENIZER = CharTokenizer()
