"""The sender stage: one module per decision, each a pure function to a verdict or a `Reject`.

Order per request: normalise number → consent → dedup → content rules → quiet hours /
schedule → frequency caps → throttle → gateway. `decision.Reject` is the common negative
outcome; the agent turns it into a send outcome with its status and reason code.
"""
