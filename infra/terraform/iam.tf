# IRSA roles: compactor and receiver read-write on the bucket, gateway read-only.

locals {
  bucket_arn  = aws_s3_bucket.strata.arn
  objects_arn = "${aws_s3_bucket.strata.arn}/*"
}

data "aws_iam_policy_document" "assume" {
  for_each = var.service_accounts
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_provider_url}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${each.value}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_provider_url}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "strata" {
  for_each           = var.service_accounts
  name               = "strata-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
  tags               = var.tags
}

data "aws_iam_policy_document" "read_write" {
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [local.bucket_arn]
  }
  statement {
    sid       = "Objects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = [local.objects_arn]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "Kms"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

data "aws_iam_policy_document" "read_only" {
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
  }
  statement {
    sid       = "Objects"
    actions   = ["s3:GetObject"]
    resources = [local.objects_arn]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "Kms"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "compactor" {
  name   = "strata-bucket-read-write"
  role   = aws_iam_role.strata["compactor"].id
  policy = data.aws_iam_policy_document.read_write.json
}

resource "aws_iam_role_policy" "receiver" {
  name   = "strata-bucket-read-write"
  role   = aws_iam_role.strata["receiver"].id
  policy = data.aws_iam_policy_document.read_write.json
}

resource "aws_iam_role_policy" "gateway" {
  name   = "strata-bucket-read-only"
  role   = aws_iam_role.strata["gateway"].id
  policy = data.aws_iam_policy_document.read_only.json
}
