"""The pure parts of Aegis: actions, results, risk, policies and plans. No I/O."""
