DROP TABLE cluster_instances;
DROP TABLE cluster_lease;
