-- counter.lua -- counts the device's "tick" messages, keeps the count across
-- agent restarts (server.save / server.load), and answers it over HTTP:
--
--   GET  /agent/{agent_id}/count   ->  200 {"count":3}
--   POST /agent/{agent_id}/reset   ->  200 {"count":0}

local count = (server.load() or {}).count or 0

local function save()
  server.save({count = count})
end

device.on("tick", function()
  count = count + 1
  save()
end)

http.onrequest(function(req, res)
  if req.path == "/count" then
    if req.method ~= "GET" then
      res.header("Allow", "GET")
      res.send(405, {error = "use GET"})
      return
    end
    res.send(200, {count = count})
  elseif req.path == "/reset" and req.method == "POST" then
    count = 0
    save()
    res.send(200, {count = count})
  else
    res.send(404, {error = "nothing at " .. req.path})
  end
end)
