"""The Azure edge: what the three functions do, and the Azure-only inputs and tools.

Owns Event Grid events (``events``), the versioned queue messages (``messages``), the timer,
event and worker logic (``handlers``, called by ``function_app.py``), the process lifetime in
the Functions host (``runtime``), the daily ``check`` the timer runs (``daily_check``) and the
poison queue tools (``poison``). May import ``jobs``
and every layer below it; nothing below imports it.
"""
