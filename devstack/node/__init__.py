"""devstack's node: what a kubelet and kube-proxy do on a real node, with local processes.

It registers a Node with a declared capacity, runs the Pods the real kube-scheduler binds to it
as local process groups, for the images of one table (images.py: rclone's storage initializer
and MLServer), probes them, restarts them, reports their status through the API, and makes
Service ClusterIPs answer (proxy.py). It is a stand-in for a cluster's node, never the thing under
test. Run by ``devstack up`` as ``python -m devstack.node``.
"""
