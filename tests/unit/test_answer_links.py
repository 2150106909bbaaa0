"""The answer stage's handling of prose that needs a closer look: markers and sandbox links."""

from pgw.converters.answer import Answer
from pgw.converters.events import Message, SandboxFile


class Recorder:
    """Stands in for the renderer: records what the answer stage passes on, in order (prose as
    ``str``, ``Cite`` and ``SandboxFile`` values as they are: a sandbox file stands for the
    whole link, its label and brackets included); ``take()`` as a renderer's."""

    def __init__(self):
        self.out = []

    def take(self):
        out, self.out = self.out, []
        return out

    def prose(self, text):
        self.out.append(text)

    def cite(self, cite):
        self.out.append(cite)

    def sandbox_file(self, file, label=None):
        if label is not None:
            self.out.append("[%s]" % label)  # the link's label, passed with the file
        self.out.append(file)


def prose(*deltas, citations=None, end=True):
    msg = Message("m1", "assistant")
    msg.metadata = {"citations": citations or []}
    rec = Recorder()
    answer = Answer(rec)
    answer.start(msg)
    out = rec.take()
    steps = []
    for d in deltas:
        answer.text(msg, d)
        got = rec.take()
        steps.append(got)
        out += got
    if end:
        answer.end(msg)
        answer.close()
        out += rec.take()
    return out, steps


def texts(passed_on):
    return "".join(s if type(s) is str else "<%r>" % s for s in passed_on)


def test_sandbox_link_split_over_events():
    out, _ = prose("see [r](sa", "ndbox:/mnt/da", "ta/r.csv) ok")
    assert texts(out) == "see [r]<SandboxFile('/mnt/data/r.csv')> ok"
    [f] = [s for s in out if type(s) is SandboxFile]
    assert f.message_id == "m1"


def test_bracket_that_is_not_a_sandbox_link_passes_through():
    out, _ = prose("f(x) = (s", "ome) thing (sandbox:nope")
    assert texts(out) == "f(x) = (some) thing (sandbox:nope"


def test_prose_after_a_source_less_marker_is_not_held_until_the_end():
    _, steps = prose("a【9†source】", "b" * 300, end=False)
    assert texts(steps[1]) == "<Cite(9, None, None)>" + "b" * 300


def test_marker_waits_for_its_source_in_a_later_event():
    msg = Message("m1", "assistant")
    rec = Recorder()
    answer = Answer(rec)
    answer.start(msg)
    answer.text(msg, "x【3†source】")
    assert texts(rec.take()) == "x"
    msg.metadata = {"citations": [{"metadata": {"title": "T", "url": "https://t",
                                                "extra": {"cited_message_idx": 3}}}]}
    answer.update(msg)
    assert texts(rec.take()) == "<Cite(3, 'T', 'https://t')>"


def test_sandbox_path_with_brackets_is_one_link():
    """Files the code writes twice get names like "report (1).csv"; markdown allows the brackets."""
    out, _ = prose("[r](sandbox:/mnt/data/report (", "1).csv) and (sandbox:/mnt/data/a(b)c.txt).")
    assert texts(out) == ("[r]<SandboxFile('/mnt/data/report (1).csv')> and "
                          "<SandboxFile('/mnt/data/a(b)c.txt')>.")


def test_unbalanced_bracket_ends_the_sandbox_link():
    out, _ = prose("(sandbox:/mnt/data/x.csv)) and (sandbox:/mnt/data/y (2.csv) z")
    assert texts(out) == "<SandboxFile('/mnt/data/x.csv')>) and (sandbox:/mnt/data/y (2.csv) z"


def test_the_label_of_a_file_link_travels_with_the_file_however_it_is_split():
    text = "见 [报告 (1).csv](sandbox:/mnt/data/报告 (1).csv) 与 [a](https://x) [b]。"
    for cut in range(len(text) + 1):
        out, _ = prose(text[:cut], text[cut:])
        [i] = [i for i, x in enumerate(out) if type(x) is SandboxFile]
        assert out[i - 1] == "[报告 (1).csv]", cut  # passed with the file, not as prose before it
        assert texts(out) == "见 [报告 (1).csv]<SandboxFile('/mnt/data/报告 (1).csv')> 与 [a](https://x) [b]。", cut


def test_no_private_use_character_in_a_file_link_label():
    out, _ = prose("[r\ue200cite\ue202turn0search0\ue201\ue206.csv](sandbox:/mnt/data/r.csv)")
    assert texts(out) == "[r.csv]<SandboxFile('/mnt/data/r.csv')>"
