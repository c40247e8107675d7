from transformers import AutoTokenizer

from inference.text_stream import TextStream


def test_stream_reassembles_text_and_holds_back_possible_stop(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("The mayor plans the work. STOP here").input_ids
    stream = TextStream(tok, stop=("STOP",))
    out = "".join(stream.add(i) for i in ids)
    assert stream.stopped and out == stream.text == "The mayor plans the work. "


def test_stream_without_stop_emits_everything(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Use bd create and gt sling é"
    stream = TextStream(tok, stop=("zzz",))
    out = "".join(stream.add(i) for i in tok(text).input_ids) + stream.finish()
    assert out == text and not stream.stopped
