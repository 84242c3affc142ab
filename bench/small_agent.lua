-- small_agent.lua -- the agent_memory benchmark's agent: a little state per
-- device, as a real one would keep.  Counts the device's connections and
-- "tick" messages, saves the count with server.save at every connect, and
-- runs a timer.

local state = server.load() or {}
state.connects = state.connects or 0
state.ticks = state.ticks or 0
local beats = 0

device.onconnect(function()
  state.connects = state.connects + 1
  server.save(state)
end)

device.on("tick", function()
  state.ticks = state.ticks + 1
end)

timer.every(60, function()
  beats = beats + 1
end)
