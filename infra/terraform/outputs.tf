output "bucket_name" {
  description = "The bucket: set [store] url = \"s3://<bucket_name>\" in infra/k8s/configmap.yaml."
  value       = aws_s3_bucket.strata.bucket
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.strata.arn
}

output "compactor_role_arn" {
  description = "IRSA role for the strata-compactor ServiceAccount (read-write)."
  value       = aws_iam_role.strata["compactor"].arn
}

output "receiver_role_arn" {
  description = "IRSA role for the strata-receiver ServiceAccount (read-write)."
  value       = aws_iam_role.strata["receiver"].arn
}

output "gateway_role_arn" {
  description = "IRSA role for the strata-gateway ServiceAccount (read-only)."
  value       = aws_iam_role.strata["gateway"].arn
}
