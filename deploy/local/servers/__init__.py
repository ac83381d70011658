"""The servers of the private local stack, one module each, behind deploy/local/stack.py.

Standard library only, and relative imports only: the package is imported as `servers` when
stack.py runs as a script (sys.path[0] is deploy/local) and as `deploy.local.servers` from
Python code.
"""
