-- Argo CD health of a ModelPromotion (mlops.dev/v1alpha1), from the status the operator writes.
--
--   Progressing  no status yet, the current generation not decided (observedGeneration behind
--                metadata.generation), or a decision under way: Pending, Copying, Deploying (the
--                rollout in flight); the message says what is waited for
--   Healthy      Promoted: the SeldonDeployment serves this promotion's copy
--   Degraded     Rejected (gates, an incompatible model, a bad spec) or Failed (the copy no
--                longer matches its manifest); or Promoted with Ready=False, reason Degraded: the
--                model still serves, but the operator's check of it fails (the message says why)
--   Suspended    Superseded: a later promotion serves the SeldonDeployment now
--
-- Argo CD runs this with gopher-lua (Lua 5.1): `obj` in, {status, message} out.
local hs = {status = "Progressing", message = "Waiting for the operator to handle this promotion"}

local status = obj.status
if status == nil then
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = status.observedGeneration
if observed == nil or (generation ~= nil and observed < generation) then
  hs.message = "Waiting for the operator to decide generation " .. tostring(generation or "?")
  if observed ~= nil then
    hs.message = hs.message .. " (status describes generation " .. tostring(observed) .. ")"
  end
  return hs
end

local function condition(kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local phase = status.phase
local message = status.message
if phase == "Promoted" then
  hs.status = "Healthy"
  local ready = condition("Ready")
  if ready ~= nil and ready.status == "False" and ready.reason == "Degraded" then
    hs.status = "Degraded"
    message = ready.message or message
  end
elseif phase == "Rejected" or phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Superseded" then
  hs.status = "Suspended"
  if message == nil and status.supersededBy ~= nil then
    message = "superseded by " .. status.supersededBy
  end
else
  -- Pending, Copying, Deploying, or a phase this script does not know yet.
  local reconciling = condition("Reconciling")
  if reconciling ~= nil and reconciling.status == "True" and reconciling.message ~= nil then
    message = reconciling.message
  end
  if message == nil then
    message = "Phase " .. tostring(phase or "unset")
  end
end
hs.message = message or ("Phase " .. phase)
return hs
