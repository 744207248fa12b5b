"""Customer mail as customers write it, a few sentences each, by language (ISO 639-1)."""

MAILS: dict[str, list[str]] = {
    "de": [
        "Hallo zusammen,\n\nseit dem Update gestern finde ich den Export für die Monatsberichte "
        "nicht mehr. Können Sie mir sagen, wo er jetzt ist?\n\nViele Grüße\nJana",
        "Guten Tag,\n\nwir möchten zwei weitere Kolleginnen zu unserem Konto hinzufügen. Wie "
        "gehen wir dabei am besten vor, und ändert sich dadurch unsere Rechnung?\n\nDanke!",
        "Hallo Frau Smith,\n\nvielen Dank für die Schulung letzte Woche. Wir hätten noch eine "
        "Frage zu den Berechtigungen der Teamleiter.\n\nBeste Grüße aus München",
        "Sehr geehrte Damen und Herren,\n\nunser Vertrag läuft Ende des Monats aus. Bitte "
        "schicken Sie uns ein Angebot für die Verlängerung um ein Jahr.",
        "Hi,\n\nkönnen wir das Dashboard so einstellen, dass es jeden Montag automatisch per "
        "E-Mail an die Geschäftsführung geht?\n\nGruß, Thomas",
        "Hallo,\n\nich habe mein Passwort vergessen und die Mail zum Zurücksetzen kommt nicht "
        "an. Was kann ich tun?",
    ],
    "fr": [
        "Bonjour,\n\ndepuis la mise à jour d'hier, je ne trouve plus l'export des rapports "
        "mensuels. Pouvez-vous m'indiquer où il se trouve maintenant ?\n\nCordialement,\nMarie",
        "Bonjour,\n\nnous souhaitons ajouter deux collègues à notre compte. Comment faire, et "
        "est-ce que notre facture va changer ?\n\nMerci d'avance",
        "Madame, Monsieur,\n\nnotre contrat arrive à échéance à la fin du mois. Pourriez-vous "
        "nous envoyer une proposition de renouvellement pour un an ?",
        "Bonjour Alice,\n\nmerci beaucoup pour la formation de la semaine dernière. Nous avons "
        "encore une question sur les droits des responsables d'équipe.\n\nBien à vous",
        "Salut,\n\nest-il possible d'envoyer le tableau de bord automatiquement chaque lundi "
        "par e-mail à la direction ?\n\nThomas",
        "Bonjour,\n\nj'ai oublié mon mot de passe et je ne reçois pas l'e-mail de "
        "réinitialisation. Que dois-je faire ?",
    ],
    "es": [
        "Hola,\n\ndesde la actualización de ayer no encuentro la exportación de los informes "
        "mensuales. ¿Me pueden decir dónde está ahora?\n\nSaludos,\nLucía",
        "Buenos días,\n\nqueremos añadir a dos compañeras a nuestra cuenta. ¿Cuál es la mejor "
        "manera de hacerlo y cambiará nuestra factura?\n\nGracias",
        "Estimados señores:\n\nnuestro contrato vence a finales de mes. Por favor, envíennos "
        "una oferta para renovarlo un año más.",
        "Hola Alice,\n\nmuchas gracias por la formación de la semana pasada. Todavía tenemos "
        "una pregunta sobre los permisos de los jefes de equipo.\n\nUn saludo",
        "Hola,\n\n¿podemos configurar el panel para que se envíe automáticamente cada lunes "
        "por correo a la dirección?\n\nTomás",
        "Hola,\n\nolvidé mi contraseña y no me llega el correo para restablecerla. ¿Qué puedo "
        "hacer?",
    ],
    "en": [
        "Hi there,\n\nsince yesterday's update I can't find the export for the monthly reports "
        "anymore. Could you tell me where it is now?\n\nBest,\nJane",
        "Hello,\n\nwe'd like to add two more colleagues to our account. What's the best way to "
        "do that, and will it change our invoice?\n\nThanks!",
        "Dear team,\n\nour contract ends at the end of the month. Please send us a quote for "
        "renewing it for another year.",
        "Hi Alice,\n\nthanks a lot for the training session last week. We still have a question "
        "about the permissions of team leads.\n\nKind regards",
        "Hey,\n\ncan we set the dashboard up so that it is emailed to the management team "
        "automatically every Monday?\n\nTom",
        "Hello,\n\nI forgot my password and the reset email never arrives. What can I do?",
    ],
}
