"""pytest options: check the trainer against any llm.c model + debug state pair, not only the fixture."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_addoption(parser):
    parser.addoption("--model", default=os.path.join(HERE, "data", "fixtures", "ref_model.bin"),
                     help="llm.c model checkpoint to check (default: the committed fixture)")
    parser.addoption("--state", default=os.path.join(HERE, "data", "fixtures", "ref_debug_state.bin"),
                     help="llm.c debug state made from that checkpoint (default: the committed fixture's)")
