"""Build tools, not runtime code: they write docs/ from the message models (`make schemas`),
so the image and the wheel leave them out."""
