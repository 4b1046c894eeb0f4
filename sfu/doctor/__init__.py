"""`keyroom doctor`: checks a deployment the way an auditor would and prints what to fix.

- `finding`: a finding (severity, what, problem, fix), its line and the exit status.
- `settings`: pure checks of the configuration's options (keys, origins, addresses, TURN, ...).
- `certs`: pure checks of a certificate and its private key (expiry, algorithm, size, match).
- `coturn`: pure checks of coturn config lines: no open relay.
- `live`: a running server probed over HTTP(S), and pure checks of what it answered.
- `run`: the edge: reads the files, stats the directories, verifies the audit chain, prints.
"""
