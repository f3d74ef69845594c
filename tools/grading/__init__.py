"""The autograder's parts (tools/grade.py is the command line).

Grader side (the process that owns the report): `tree` (the course folder each child runs in, and the
checks that nothing changed it), `runner` (the child processes, their time, memory and output limits),
`report` (the terminal table and Gradescope's results.json).
Child side (loaded into the pytest process that runs student code): `child_plugin` (reports each test),
`watchdog` (stops a test that runs too long, so the next one needs no fresh process), `guard` (notices
student code that replaces functions of torch, pytest or the tests), `reasons` (an exception -> the
one-line reason a student reads).
Both sides: `channel` (the signed records the child sends the grader).
"""
