"""Interactive recommendation sessions (issue #18): a user profile (structured preference + appearance), rounds of
PFITB / GOR candidates regenerated under feedback-edited preferences, SQLite persistence and deterministic replay.

`engine.SessionEngine` is the API (the `session` CLI and the web page are its clients); `feedback` parses short
free text against the dataset's attribute vocabulary; `simulate` is the oracle user of the synthetic world.
"""
