-- heartbeat.lua -- once a minute, asks a connected device for a heartbeat;
-- logs the device's answers, says so (once) when the device has been away
-- for five beats, and again when it comes back.
--
--   agent:   {"type":"msg","name":"heartbeat","data":{"time":1700000000}}
--   device:  {"type":"msg","name":"heartbeat","data":{"uptime":12}}

local INTERVAL = 60   -- seconds
local missed = 0

timer.every(INTERVAL, function()
  if device.isconnected() then
    missed = 0
    device.send("heartbeat", {time = os.time()})
  else
    missed = missed + 1
    if missed == 5 then
      server.error("device offline for " .. missed * INTERVAL // 60 .. " minutes")
    end
  end
end)

device.on("heartbeat", function(data)
  server.log("heartbeat: uptime " .. tostring(data and data.uptime) .. " s")
end)

device.onconnect(function()
  if missed > 0 then
    server.log("device back after " .. missed .. " missed heartbeats")
    missed = 0
  end
end)
