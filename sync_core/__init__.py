"""registry-sync's core: mirrors an Azure Container Registry to other registries, exactly.

The sub-packages are the layers, bottom to top; each imports only those below it
(tests/meta/test_imports.py holds the table, docs/architecture.md draws it):

* ``errors``, ``logs``: the one error tree; decision log lines and thread pools tied to an invocation;
* ``registry``: the registry client stack (names, untrusted JSON, manifests, retry, transport, auth, client, streams);
* ``config``: the settings (declared once), loading them, the credentials they name;
* ``engine``: the copy engine: one image to its targets, byte-identical, referrers with it;
* ``plan``: work items, selection, name mapping, the source catalog and the diff against each target;
* ``report``: what a run did: the summary, the recorder, the OpenTelemetry metrics;
* ``jobs``: the jobs that use them all: sync, verify;
* ``azure``, ``cli``: the edges: the Functions app's logic (events, queue messages, poison queue) and the command line.
"""
