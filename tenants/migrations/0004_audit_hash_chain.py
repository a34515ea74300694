from django.db import migrations, models

from tenants.audit_chain import GENESIS, chain_name, link_hash


def link_existing_events(apps, schema_editor):
    """Chain the events written before chains existed, oldest first, one chain per tenant."""
    audit_event = apps.get_model("tenants", "AuditEvent")
    chain_head = apps.get_model("tenants", "AuditChainHead")
    heads: dict[str, tuple[int, str]] = {}
    for event in audit_event.objects.order_by("id").iterator(chunk_size=2000):
        event.chain = chain_name(event.tenant_id)
        sequence, previous = heads.get(event.chain, (0, GENESIS))
        event.sequence, event.previous_hash = sequence + 1, previous
        event.row_hash = link_hash(previous, event)
        audit_event.objects.filter(pk=event.pk).update(
            chain=event.chain, sequence=event.sequence, previous_hash=event.previous_hash, row_hash=event.row_hash
        )
        heads[event.chain] = (event.sequence, event.row_hash)
    chain_head.objects.bulk_create(
        [chain_head(chain=chain, sequence=sequence, head_hash=head) for chain, (sequence, head) in heads.items()]
    )


class Migration(migrations.Migration):
    dependencies = [("tenants", "0003_schedule_platform_heartbeat")]

    operations = [
        migrations.CreateModel(
            name="AuditChainHead",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("chain", models.CharField(max_length=32, unique=True)),
                ("sequence", models.PositiveBigIntegerField(default=0)),
                ("head_hash", models.CharField(max_length=64)),
            ],
        ),
        migrations.CreateModel(
            name="AuditDigest",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("chain", models.CharField(db_index=True, max_length=32)),
                ("sequence", models.PositiveBigIntegerField()),
                ("head_hash", models.CharField(max_length=64)),
                ("signed_at", models.DateTimeField()),
                ("key_id", models.CharField(max_length=16)),
                ("signature", models.CharField(max_length=128)),
            ],
            options={"ordering": ["chain", "sequence"]},
        ),
        migrations.AddField(
            model_name="auditevent", name="chain", field=models.CharField(default="", max_length=32), preserve_default=False
        ),
        migrations.AddField(
            model_name="auditevent", name="sequence", field=models.PositiveBigIntegerField(default=0), preserve_default=False
        ),
        migrations.AddField(
            model_name="auditevent",
            name="previous_hash",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent", name="row_hash", field=models.CharField(default="", max_length=64), preserve_default=False
        ),
        migrations.RunPython(link_existing_events, migrations.RunPython.noop),
    ]
