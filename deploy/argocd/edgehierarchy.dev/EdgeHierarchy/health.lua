-- Argo CD health check for EdgeHierarchy (edgehierarchy.dev/v1alpha1).
--
-- Install it into argocd-cm as resource.customizations.health.edgehierarchy.dev_EdgeHierarchy
-- (see docs/gitops.md). It uses only the Lua base library (ipairs, comparisons, `..`): for checks
-- configured in argocd-cm Argo CD opens just base, package, table and an os with time and date,
-- so there is no string or math library (and no string methods) to rely on.
-- Tested with `gitops-health argo-test` against health_test.yaml (e2e/tools/gitops-health).
--
-- The conditions are the operator's (operator/src/api/status.rs): Ready, Reconciling, Stalled,
-- DriftDetected, CertificatesReady, DeploymentsReady, ModulesHealthy.

local function condition(kind)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- "Reason: message", or whichever of the two is set.
local function describe(c)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason == "" then return message end
  if message == "" then return reason end
  return reason .. ": " .. message
end

local waiting = {status = "Progressing", message = "Waiting for the operator to reconcile"}
if obj.status == nil then
  return waiting
end

local ready = condition("Ready")
local stalled = condition("Stalled")
local reconciling = condition("Reconciling")

-- A status written for an older spec says nothing about the current one, a stall included
-- (the new spec may fix it). The first reconcile writes Ready=Unknown before any
-- observedGeneration; its reason and message say so.
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= generation then
  if observed == nil then
    if ready ~= nil then
      return {status = "Progressing", message = describe(ready)}
    end
    return waiting
  end
  return {status = "Progressing",
          message = "Waiting for the operator to observe generation " .. generation ..
                    " (status is for generation " .. observed .. ")"}
end

-- A person must act: invalid spec, bad credentials, an ownership conflict, a bad root CA.
-- This wins over Ready, whatever Ready says.
if stalled ~= nil and stalled.status == "True" then
  return {status = "Degraded", message = describe(stalled)}
end

if ready == nil then
  return waiting
end
if ready.status ~= "True" then
  return {status = "Progressing", message = describe(ready)}
end
if reconciling ~= nil and reconciling.status == "True" then
  return {status = "Progressing", message = describe(reconciling)}
end

-- Ready covers the devices in the hub; deployments and modules are judged after it.
local modules = condition("ModulesHealthy")
if modules ~= nil and modules.status == "False" then
  return {status = "Degraded", message = describe(modules)}
end
-- Unknown: agents that have not reported yet or deployments not processed yet; only time is
-- needed, so this is not Degraded.
if modules ~= nil and modules.status == "Unknown" then
  return {status = "Progressing", message = describe(modules)}
end
local deployments = condition("DeploymentsReady")
if deployments ~= nil and deployments.status == "False" then
  return {status = "Progressing", message = describe(deployments)}
end
local certificates = condition("CertificatesReady")
if certificates ~= nil and certificates.status == "False" then
  return {status = "Progressing", message = describe(certificates)}
end

return {status = "Healthy", message = ready.message or ""}
