"""``make bench``: imagesync against ``skopeo sync`` on loopback registries."""
