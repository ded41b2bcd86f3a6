-- declare_limits: ARGV = K, then pairs of kind and JSON of its limits ('' drops the kind's).
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', K .. 'limits', ARGV[i])
  else
    redis.call('HSET', K .. 'limits', ARGV[i], ARGV[i + 1])
  end
end
return 1
