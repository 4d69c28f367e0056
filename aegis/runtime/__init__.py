"""The parts of Aegis with side effects: the engine, approval handlers and audit backends."""
