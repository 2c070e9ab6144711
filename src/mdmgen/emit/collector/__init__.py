"""The collector side, emitted from the same policy and inventory as the device files.

``output/collector/`` holds the OpenTelemetry Collector's config, the Prometheus rules, the Grafana
dashboards and the Kubernetes ingress for the collector. Each is a fleet-level artifact kind (see
``emit.registry``) made by one module here from a :class:`~mdmgen.emit.inputs.FleetInput`: the
compiled devices, the policy, and the distinct OTLP destinations the devices' rendered settings
send to. They are consistent with the devices by construction: the receivers are the devices'
protocols and ports, the bearer token is the reference the devices' headers name, and the team
label and its values are what the devices send (their rendered resource attributes, see
``emit.inputs.SentTeam``), each counted against the inventory's headcount.

Every emitter returns None when the policy has no ``collector:`` section. They are pure and
deterministic: no clock, everything sorted.
"""
