"""One module a screen, each an APIRouter that `ui.routes.mount_ui` mounts under `/ui`."""
