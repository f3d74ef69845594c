"""Words in a submitted file that an honest exercise solution has no reason to hold.

The grader's defences are listed in tools/grade.py; what they cannot stop is code written to attack the
grader from inside its own process (reading the plugin's objects, forking daemons). Such code has to name
what it attacks, so the grader lists these words in its report for an instructor to read. They never change
the score: this is a prompt to look, not a verdict.
"""
SUSPICIOUS = (
    "tools.grading", "child_plugin", "_pytest", "pluggy", "import gc", "gc.get_", "__closure__",
    "sys.modules", "sys._getframe", "/proc/", "COURSE_GRADER", "os.fork", "setsid", "results.json",
    "ctypes", "os.dup2", "os.closerange", "__code__", "builtins",
)


def suspicious_words(source: bytes) -> list[str]:
    text = source.decode("utf-8", "replace")
    return [word for word in SUSPICIOUS if word in text]
