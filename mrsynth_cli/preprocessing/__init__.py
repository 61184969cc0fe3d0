"""Preprocessing: registration, brain and tissue masks, and invertible geometry/intensity steps."""
