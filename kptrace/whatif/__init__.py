"""What-if: a fix tried on a copy of the loaded model, never on a node (docs/what-if.md)."""
