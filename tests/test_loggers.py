"""Progress bars of the training loop: only on a terminal."""

import io

import torch
from torch import nn

from pranc_fed.training import train_steps


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tiny_steps(**kwargs) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(5)]
    train_steps(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), **kwargs)


def test_progress_is_silent_off_a_terminal(capsys):
    tiny_steps()  # stderr, as in Flower's client processes: captured here, so not a terminal
    tiny_steps(bar_file=io.StringIO())
    assert capsys.readouterr() == ("", "")


def test_progress_shows_on_a_terminal():
    terminal = Terminal()
    tiny_steps(desc="epoch 1/2", bar_file=terminal, max_steps=4)
    assert terminal.getvalue().startswith("\repoch 1/2:   0%|          | 0/4 [")
    assert terminal.getvalue().endswith("\r")  # leave=False: the epoch's log line takes the bar's place
