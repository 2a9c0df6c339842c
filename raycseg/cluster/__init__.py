"""Ray cluster configs: render the shipped templates and check a config's fields.

`configs` renders the templates; `checks` checks the fields of a cluster launcher
config and `kuberay` those of KubeRay manifests; `gpu_nodes` holds the GPU node
shapes the templates are filled with. Nothing here talks to a cloud or to Kubernetes.
"""
