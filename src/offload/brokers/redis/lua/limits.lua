-- limits: ARGV = K, now (opt: none for the server's clock). Every stored kind's limits
-- with its usage: {kind, JSON of the limits, running, starts within the window} per kind.
local out = {}
for kind, g in pairs(kind_gates(nil, now_or_server(ARGV[2]))) do
  out[#out + 1] = {kind, cjson.encode(g.lim), g.running, g.starts}
end
return out
