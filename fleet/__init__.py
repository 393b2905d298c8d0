"""store-fleet: the info department's console (issue 16). It reads what every store's agent publishes
(status, health, alerts, stats, config/state), keeps the fleet's picture with a small SQLite history,
pushes config overlays in canaries and waves, and sends signed requests. Same protocol models as the agent."""
