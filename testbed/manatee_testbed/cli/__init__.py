"""Command-line front ends of the test bed: manatee-sandbox and manatee-nemesis."""
