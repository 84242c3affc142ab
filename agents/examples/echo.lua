-- echo.lua -- the smallest agent: every "echo" message the device sends
-- comes straight back to it, data unchanged.
--
--   device:  {"type":"msg","name":"echo","data":{"n":1}}
--   agent:   {"type":"msg","name":"echo","data":{"n":1}}

device.on("echo", function(data)
  device.send("echo", data)
end)

device.onconnect(function()
  server.log("device connected")
end)
